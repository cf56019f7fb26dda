//! The OpenAPI document against the types, and the wire format pinned.

use super::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json parses")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// The fields written only when present (`skip_serializing_if`).
const OMITTED_WHEN_ABSENT: [(&str, &str); 5] = [
    ("Started", "vm"),
    ("PurgeSummary", "partial"),
    ("PurgeSummary", "resident_kinds_bytes"),
    ("PurgeSummary", "shmem_layout"),
    ("ActivationTiming", "planned_pages"),
];

/// Every object type of the API with a sample value (all optional fields present, as on the
/// wire).
fn samples() -> Vec<(&'static str, Value)> {
    macro_rules! s {
        ($($t:ident),* $(,)?) => {
            vec![$((stringify!($t), serde_json::to_value($t::default()).unwrap())),*]
        };
    }
    let mut v = s![
        ActivationTiming,
        AlreadyRunning,
        AlreadyStopped,
        AppCgroups,
        AppList,
        AppStatus,
        ClassFetch,
        Counters,
        ErrorBody,
        ErrorDetail,
        EventList,
        Evidence,
        GuestRamReport,
        KindCounts,
        Health,
        ShmemLayout,
        MapsSummary,
        MemoryStatus,
        OverloadStatus,
        ProbeTiming,
        ProcessStopped,
        PurgeSummary,
        RamRange,
        StartRequest,
        StartTiming,
        StopRequest,
        StopEvidence,
        StopTiming,
        TwinkleStats,
        VmColdStart,
        VmLoadingSet,
        VmResume,
        VmStatus,
        VmStop,
        VmStopped,
    ];
    let started = Started {
        vm: Some(VmStart::Cold(VmColdStart::default())),
        ..Started::default()
    };
    v.push(("Started", serde_json::to_value(started).unwrap()));
    let ev = Event {
        seq: 1,
        unix_time: 0.0,
        app: None,
        kind: EventKind::Start,
        message: String::new(),
    };
    v.push(("Event", serde_json::to_value(ev).unwrap()));
    v
}

#[test]
fn document_names_the_fields_of_every_type() {
    let d = doc();
    let schemas = d["components"]["schemas"].as_object().unwrap();
    let samples = samples();
    let objects: BTreeSet<&str> = schemas
        .iter()
        .filter(|(_, s)| s["type"] == "object")
        .map(|(n, _)| n.as_str())
        .collect();
    let typed: BTreeSet<&str> = samples.iter().map(|(n, _)| *n).collect();
    assert_eq!(objects, typed, "object schemas in openapi.json vs types");
    for (name, sample) in &samples {
        let s = &schemas[*name];
        let required: BTreeSet<String> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        // Fields that are left out of the wire when absent: documented as not required.
        let optional: BTreeSet<String> = keys(&s["properties"])
            .difference(&required)
            .cloned()
            .collect();
        for o in &optional {
            assert!(
                OMITTED_WHEN_ABSENT.contains(&(*name, o.as_str())),
                "{name}.{o}: not required in openapi.json, but always on the wire"
            );
        }
        let mut fields = keys(sample);
        fields.extend(optional.iter().cloned());
        assert_eq!(keys(&s["properties"]), fields, "{name}: fields");
        for r in &required {
            assert!(sample.get(r).is_some(), "{name}.{r}");
        }
        // Each property's reference names a schema of the document.
        for (f, p) in s["properties"].as_object().unwrap() {
            let r = p["$ref"]
                .as_str()
                .or_else(|| p["oneOf"][0]["$ref"].as_str())
                .or_else(|| p["items"]["$ref"].as_str());
            if let Some(r) = r {
                let target = r.trim_start_matches("#/components/schemas/");
                assert!(schemas.contains_key(target), "{name}.{f} -> {r}");
            }
        }
    }
}

#[test]
fn document_names_every_enum_value() {
    let d = doc();
    let s = &d["components"]["schemas"];
    let list = |n: &str| -> Vec<String> {
        s[n]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let strs = |v: Vec<Value>| -> Vec<String> {
        v.into_iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let states = AppState::ALL.map(|x| serde_json::to_value(x).unwrap());
    assert_eq!(list("AppState"), strs(states.to_vec()));
    for st in AppState::ALL {
        assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
    }
    let kinds = EventKind::ALL.map(|x| serde_json::to_value(x).unwrap());
    assert_eq!(list("EventKind"), strs(kinds.to_vec()));
    for k in EventKind::ALL {
        assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
    }
    assert_eq!(list("Op"), ["start", "stop"]);
    for o in [Op::Start, Op::Stop] {
        assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
    }
    assert_eq!(list("AppKind"), ["process", "vm"]);
    let methods = PurgeMethod::ALL.map(|x| serde_json::to_value(x).unwrap());
    assert_eq!(list("PurgeMethod"), strs(methods.to_vec()));
    for m in PurgeMethod::ALL {
        assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
    }
}

#[test]
fn document_names_every_path() {
    let d = doc();
    let documented = keys(&d["paths"]);
    let served: BTreeSet<String> = [
        paths::HEALTH.to_string(),
        paths::APPS.to_string(),
        paths::app("{name}"),
        paths::start("{name}"),
        paths::stop("{name}"),
        paths::EVENTS.to_string(),
        paths::METRICS.to_string(),
    ]
    .into();
    assert_eq!(documented, served);
}

/// Parse `wire` as `T`, and check that `T` writes it back unchanged (same fields, same values).
fn roundtrip<T: serde::de::DeserializeOwned + Serialize>(wire: Value) -> T {
    let t: T = serde_json::from_value(wire.clone()).expect("parses");
    assert_eq!(serde_json::to_value(&t).unwrap(), wire);
    t
}

#[test]
fn wire_format_start() {
    let a: StartAnswer = roundtrip(json!({
        "app": "web", "state": "running", "ready": true, "already_running": true,
        "timing": {"probe_s": 0.01, "total_s": 0.02}
    }));
    assert!(a.already_running() && a.started().is_none());
    let timing = json!({
        "cold": false, "spawn_s": 0.0, "prefetch_s": 0.5, "thaw_s": 0.01, "probe_s": 0.1,
        "total_s": 0.7, "to_thaw_s": 0.51, "after_thaw_s": 0.001, "probes": 2, "probe_armed": true, "prefetch_bytes": 1048576, "working_set_pages": 10,
        "still_swapped_pages": 0, "prefetch_stopped": null, "prefetch_mode": "full",
        "activation": null, "unix_time": 1.5
    });
    let a: StartAnswer = roundtrip(json!({
        "app": "web", "state": "running", "ready": true, "pid": 42, "cold": false,
        "timing": timing
    }));
    let s = a.started().unwrap();
    assert_eq!((s.pid, s.timing.prefetch_bytes), (Some(42), 1 << 20));
    assert!(s.vm.is_none());
    let a: StartAnswer = roundtrip(json!({
        "app": "vm", "state": "running", "ready": true, "pid": 7, "cold": true,
        "timing": timing,
        "vm": {"cold": true, "mode": "priority", "qemu": "7.2.0", "status": "running"}
    }));
    assert!(matches!(
        a.started().unwrap().vm,
        Some(VmStart::Cold(VmColdStart { cold: true, .. }))
    ));
    let mut resume = serde_json::to_value(VmResume::default()).unwrap();
    resume["classes"] = json!([{"class": 0, "name": "Kernel", "planned_pages": 5,
        "swapped_pages": 4, "fetched_pages": 4, "fetched_bytes": 16384, "ms": 1.0}]);
    let a: StartAnswer = roundtrip(json!({
        "app": "vm", "state": "running", "ready": true, "pid": 7, "cold": false,
        "timing": timing, "vm": resume
    }));
    let Some(VmStart::Resume(r)) = &a.started().unwrap().vm else {
        panic!("not a resume: {a:?}")
    };
    assert_eq!(r.classes[0].name, "Kernel");
    let req: StartRequest = roundtrip(json!({"prefetch": "none"}));
    assert_eq!(req.prefetch.as_deref(), Some("none"));
    assert!(serde_json::from_value::<StartRequest>(json!({"prefech": "none"})).is_err());
}

#[test]
fn wire_format_stop() {
    let a: StopAnswer = roundtrip(json!({"app": "web", "state": "standby", "already": true}));
    assert!(a.already() && a.state() == AppState::Standby);
    let timing = json!({"freeze_s": 0.1, "working_set_s": 0.2, "purge_s": 0.3, "total_s": 0.7});
    let a: StopAnswer = roundtrip(json!({
        "app": "web", "state": "suspended", "timing": timing, "working_set_bytes": null,
        "purge": null, "activation": ["recorded 2 processes"]
    }));
    assert!(matches!(&a, StopAnswer::Process(p) if p.activation.len() == 1));
    let vm = serde_json::to_value(VmStop::default()).unwrap();
    let a: StopAnswer = roundtrip(json!({
        "app": "vm", "state": "standby", "timing": timing,
        "purge": serde_json::to_value(PurgeSummary::default()).unwrap(), "vm": vm
    }));
    assert!(a.vm().is_some() && a.purge().is_some());
    let req: StopRequest = roundtrip(json!({"purge": "kernel"}));
    assert_eq!(req.purge, Some(PurgeMethod::Kernel));
    let req: StopRequest = roundtrip(json!({"purge": "ordered"}));
    assert_eq!(req.purge, Some(PurgeMethod::Ordered));
    assert_eq!(
        serde_json::from_value::<StopRequest>(json!({})).unwrap(),
        StopRequest::default()
    );
    assert!(serde_json::from_value::<StopRequest>(json!({"purge": "stock"})).is_err());
    assert!(serde_json::from_value::<StopRequest>(json!({"purg": "kernel"})).is_err());
    // A purge recorded before the method existed reads as ordered.
    let mut old = serde_json::to_value(PurgeSummary::default()).unwrap();
    old.as_object_mut().unwrap().remove("method");
    old.as_object_mut().unwrap().remove("swap_moved_bytes");
    let p: PurgeSummary = serde_json::from_value(old).unwrap();
    assert_eq!((p.method, p.swap_moved_bytes), (PurgeMethod::Ordered, 0));
}

#[test]
fn wire_format_status_events_errors() {
    let mut st = serde_json::to_value(AppStatus::default()).unwrap();
    st["in_flight"] = json!("stop");
    st["kind"] = json!("vm");
    st["vm"] = serde_json::to_value(VmStatus::default()).unwrap();
    let s: AppStatus = roundtrip(st);
    assert_eq!((s.in_flight, s.kind), (Some(Op::Stop), AppKind::Vm));
    let e: EventList = roundtrip(json!({"events": [
        {"seq": 3, "unix_time": 2.5, "app": "web", "kind": "adopt_warning", "message": "m"},
        {"seq": 4, "unix_time": 2.5, "app": null, "kind": "reserve", "message": "n"}
    ]}));
    assert_eq!(e.events[0].kind, EventKind::AdoptWarning);
    let e: ErrorBody = roundtrip(json!({"error": {"code": "unknown_app", "message": "no"}}));
    assert_eq!(e.error.code, "unknown_app");
    let h: Health = roundtrip(serde_json::to_value(Health::default()).unwrap());
    assert!(h.mem_available_bytes.is_none());
}
