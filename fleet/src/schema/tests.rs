use super::*;

fn host(h: &str) -> Key {
    Key::Host(h.into())
}

fn placement_key() -> Key {
    Key::Placement {
        host: "h1".into(),
        app: "web".into(),
    }
}

fn sample_report() -> Report {
    Report {
        schema: SCHEMA,
        host: "h1".into(),
        seq: 7,
        unix_time: 1.5e9,
        interval_s: 1.0,
        cpu: CpuShare {
            share_cores: 1.0,
            used_cores: 0.25,
            fraction: 0.25,
        },
        mem_available_bytes: 1 << 30,
        share_mem_free_bytes: Some(1 << 20),
        paging_rate: 3.0,
        torpord: Some(Flags::default()),
        torpord_error: None,
        apps: [(
            "web".to_string(),
            AppReport {
                state: AppState::Standby,
                standby: true,
                busy: false,
            },
        )]
        .into(),
    }
}

fn sample_placement() -> Placement {
    Placement {
        schema: SCHEMA,
        host: "h1".into(),
        app: "web".into(),
        desired: Desired::Running,
        leader_rev: 12,
        reason: "min_running 1".into(),
        unix_time: 1.5e9,
    }
}

#[test]
fn keys_round_trip() {
    let keys = [
        host("h1"),
        Key::Report("h-2".into()),
        Key::App("web.app_1".into()),
        placement_key(),
        Key::Status {
            host: "h1".into(),
            app: "web".into(),
        },
    ];
    let paths: Vec<String> = keys.iter().map(Key::path).collect();
    assert_eq!(
        paths,
        [
            "/torpor/v1/hosts/h1",
            "/torpor/v1/reports/h-2",
            "/torpor/v1/apps/web.app_1",
            "/torpor/v1/placement/h1/web",
            "/torpor/v1/status/h1/web",
        ]
    );
    for (k, p) in keys.iter().zip(&paths) {
        assert_eq!(&Key::parse(p).unwrap(), k);
    }
    assert!(Key::placement_prefix("h1").starts_with(PREFIX));
    assert!(placement_key()
        .path()
        .starts_with(&Key::placement_prefix("h1")));
    assert!(!placement_key()
        .path()
        .starts_with(&Key::placement_prefix("h")));
}

#[test]
fn bad_keys_are_typed_errors() {
    assert_eq!(
        Key::parse("/other/hosts/h1"),
        Err(KeyError::Prefix("/other/hosts/h1".into()))
    );
    assert_eq!(
        Key::parse("/torpor/v1/nodes/h1"),
        Err(KeyError::Kind("/torpor/v1/nodes/h1".into()))
    );
    assert_eq!(
        Key::parse("/torpor/v1/placement/h1"),
        Err(KeyError::Kind("/torpor/v1/placement/h1".into()))
    );
    for bad in [
        "/torpor/v1/hosts/",
        "/torpor/v1/hosts/a b",
        "/torpor/v1/hosts/..",
        "/torpor/v1/placement/h1/web/x",
        "/torpor/v1/status//web",
    ] {
        assert!(
            matches!(Key::parse(bad), Err(KeyError::Name { .. })),
            "{bad}: {:?}",
            Key::parse(bad)
        );
    }
    assert!(!valid_name(&"x".repeat(65)));
    assert!(valid_name(&"x".repeat(64)));
}

#[test]
fn values_round_trip() {
    let r = sample_report();
    let k = Key::Report("h1".into());
    assert_eq!(decode::<Report>(&k, &encode(&r)).unwrap(), r);
    let p = sample_placement();
    assert_eq!(
        decode::<Placement>(&placement_key(), &encode(&p)).unwrap(),
        p
    );
    let s = Status {
        schema: SCHEMA,
        host: "h1".into(),
        app: "web".into(),
        placement_rev: 40,
        desired: Desired::Standby,
        outcome: Outcome::Failed,
        error: Some("unknown_app".into()),
        seen_unix: 1.0,
        done_unix: 2.0,
        torpord_s: None,
        cold: None,
    };
    let sk = Key::Status {
        host: "h1".into(),
        app: "web".into(),
    };
    assert_eq!(decode::<Status>(&sk, &encode(&s)).unwrap(), s);
    let h = HostRecord {
        schema: SCHEMA,
        host: "h1".into(),
        endpoints: [("web".to_string(), "127.0.0.2:8080".parse().unwrap())].into(),
        ttl_s: 3,
        agent_pid: 1,
        started_unix: 1.0,
    };
    assert_eq!(decode::<HostRecord>(&host("h1"), &encode(&h)).unwrap(), h);
    let a = AppSpec {
        schema: SCHEMA,
        app: "web".into(),
        backend: "web".into(),
        min_running: 1,
        max_running: 2,
        max_conn: 1,
    };
    let ak = Key::App("web".into());
    assert_eq!(decode::<AppSpec>(&ak, &encode(&a)).unwrap(), a);
    // A value written before `max_conn` existed reads as unlimited.
    let old = br#"{"schema":1,"app":"web","backend":"web","min_running":1,"max_running":2}"#;
    assert_eq!(decode::<AppSpec>(&ak, old).unwrap().max_conn, 0);
}

/// The wire format is pinned: a change here is a schema change (a new version).
#[test]
fn wire_format_is_pinned() {
    let v: serde_json::Value = serde_json::from_slice(&encode(&sample_placement())).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"schema": 1, "host": "h1", "app": "web", "desired": "running",
            "leader_rev": 12, "reason": "min_running 1", "unix_time": 1.5e9})
    );
    let v: serde_json::Value = serde_json::from_slice(&encode(&sample_report())).unwrap();
    assert_eq!(
        v["apps"]["web"],
        serde_json::json!({"state": "standby", "standby": true, "busy": false})
    );
    assert_eq!(v["cpu"]["fraction"], 0.25);
}

#[test]
fn malformed_values_are_typed_errors() {
    let k = placement_key();
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let good = serde_json::to_value(sample_placement()).unwrap();
    // Not JSON, not UTF-8, empty, the wrong type, a missing or an unknown field.
    for bytes in [
        b"garbage".to_vec(),
        vec![0xff, 0xfe, 0x00],
        vec![],
        json(serde_json::json!([1, 2])),
        json(serde_json::json!({"schema": 1, "host": "h1", "app": "web"})),
        json(
            serde_json::json!({"schema": 1, "host": "h1", "app": "web", "desired": "flying",
            "leader_rev": 1, "reason": "", "unix_time": 0.0}),
        ),
        {
            let mut g = good.clone();
            g["surprise"] = 1.into();
            json(g)
        },
    ] {
        let e = decode::<Placement>(&k, &bytes).unwrap_err();
        assert!(matches!(e, ValueError::Json { .. }), "{bytes:?}: {e}");
        assert!(e.to_string().starts_with("/torpor/v1/placement/h1/web: "));
    }
    let mut future = good.clone();
    future["schema"] = 2.into();
    assert!(matches!(
        decode::<Placement>(&k, &json(future)),
        Err(ValueError::Schema { found: 2, .. })
    ));
    let mut other_host = good.clone();
    other_host["host"] = "h2".into();
    let e = decode::<Placement>(&k, &json(other_host)).unwrap_err();
    assert!(matches!(e, ValueError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("\"h2\""), "{e}");
    // A value under the wrong kind of key.
    let e = decode::<Placement>(&host("h1"), &encode(&sample_placement())).unwrap_err();
    assert!(matches!(e, ValueError::Invalid { .. }), "{e}");
}

#[test]
fn reports_with_impossible_figures_are_refused() {
    let k = Key::Report("h1".into());
    let mut r = serde_json::to_value(sample_report()).unwrap();
    r["cpu"]["fraction"] = (-1.0).into();
    let e = decode::<Report>(&k, &serde_json::to_vec(&r).unwrap()).unwrap_err();
    assert!(matches!(e, ValueError::Invalid { .. }), "{e}");
    let mut r = sample_report();
    r.apps.insert("bad name".into(), r.apps["web"].clone());
    assert!(matches!(
        decode::<Report>(&k, &encode(&r)),
        Err(ValueError::Invalid { .. })
    ));
    let mut a = serde_json::to_value(AppSpec {
        schema: SCHEMA,
        app: "web".into(),
        backend: "web".into(),
        min_running: 3,
        max_running: 2,
        max_conn: 0,
    })
    .unwrap();
    let e = decode::<AppSpec>(&Key::App("web".into()), &serde_json::to_vec(&a).unwrap());
    assert!(matches!(e, Err(ValueError::Invalid { .. })));
    a["min_running"] = 1.into();
    a["backend"] = "a b".into();
    let e = decode::<AppSpec>(&Key::App("web".into()), &serde_json::to_vec(&a).unwrap());
    assert!(matches!(e, Err(ValueError::Invalid { .. })));
}

#[test]
fn overload_rule() {
    let mut r = sample_report();
    assert!(!r.overloaded());
    r.cpu.fraction = 0.8;
    assert!(r.overloaded());
    r.cpu.fraction = 0.79;
    r.torpord.as_mut().unwrap().hotspot = true;
    assert!(r.overloaded());
    r.torpord.as_mut().unwrap().hotspot = false;
    r.torpord.as_mut().unwrap().sustained = true;
    assert!(r.overloaded());
    // A paging spike alone (not sustained) is not overload.
    r.torpord = Some(Flags {
        rate: 1e6,
        overloaded: true,
        sustained: false,
        hotspot: false,
    });
    assert!(!r.overloaded());
}
