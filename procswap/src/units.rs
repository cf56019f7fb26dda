//! Sizes and durations as people write them, for the configuration file and the command lines
//! (`torpord`'s config, `torpor`, `torpor-guest`): the one definition of their unit rules.
//!
//! - **Sizes** ([`parse_size`]): a number (fractions allowed: `1.5G`), optionally followed by a
//!   unit, case-insensitive, with or without a space: none or `b` (bytes), `k`/`kb`/`kib`,
//!   `m`/`mb`/`mib`, `g`/`gb`/`gib`, `t`/`tb`/`tib`. Every unit is binary: `1k` and `1kB` are
//!   both 1024 bytes. Negative, NaN and infinite sizes are refused; fractions of a byte are cut.
//! - **Durations** ([`parse_duration`]): a number (fractions allowed), optionally followed by
//!   `ms`, `s`, `m` (minutes) or `h`; a bare number is seconds. Negative, NaN and infinite
//!   durations are refused.

use std::time::Duration;

/// "512M", "1G", "1.5G", "4096", "64k", "16MiB" → bytes (binary units; see the module doc).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].trim().to_ascii_lowercase();
            let m: u64 = match unit.as_str() {
                "b" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                "t" | "tb" | "tib" => 1 << 40,
                _ => return Err(format!("bad size unit in {s:?} (use K, M, G, T)")),
            };
            (t[..i].trim(), m)
        }
        None => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("bad size {s:?}"));
    }
    Ok((n * mult as f64) as u64)
}

/// "10s", "250ms", "2m", "1h", "1.5" (seconds) → Duration (see the module doc).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 10s, 250ms, 2m)"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("16 mb"), Ok(16 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("7b"), Ok(7));
        assert!(parse_size("x").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("NaN").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("16s"), Ok(Duration::from_secs(16)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
