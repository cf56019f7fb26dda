# Sourced by the vm-images scripts: the toolchain the kernel and module builds use.
# rustup's rustc (no rust-src) may come first on PATH: always name Debian's.
: "${TORPOR_CACHE:=/var/cache/torpor}"
: "${TORPOR_TOOLS:=/opt/torpor-tools}"
KRUSTC=/usr/bin/rustc
KBINDGEN="$TORPOR_TOOLS/bin/bindgen"
KMAKEFLAGS=(LLVM=1 RUSTC=/usr/bin/rustc HOSTRUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc BINDGEN="$KBINDGEN")
export TORPOR_CACHE TORPOR_TOOLS
