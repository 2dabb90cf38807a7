//! An agent of this version adopting a data path pinned by an older one (see "Migration" in
//! docs/decisions.md): the maps of older layouts (FLOWS_V1, NAT_REV_V1, ...) are removed with
//! a warning, the maps of the current layout are kept — the connection table with them, so a
//! long-lived connection goes on — and every backend keeps its id.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use veer_tests::lab::*;

/// Pinned maps of earlier layouts, as an older agent left them: (name, type, key and value
/// sizes). The sizes are those of the old layouts; only the names matter to the adoption.
const OLD_LAYOUT: &[(&str, &str, u32, u32)] = &[
    ("FLOWS_V1", "lru_hash", 40, 12),
    ("NAT_REV_V1", "lru_hash", 40, 32),
    ("NAT_REV_V2", "array", 4, 256),
    ("FLOW_HEADS_V1", "array", 4, 32),
    ("REV_HEADS_V1", "array", 4, 32),
    ("NEXTHOPS_V1", "array", 4, 16),
    ("REASONS_V1", "percpu_array", 4, 8),
];

fn ids(status: &serde_json::Value) -> BTreeMap<String, u64> {
    status["vips"][0]["pools"][0]["backends"]
        .as_array()
        .expect("backends in status")
        .iter()
        .map(|b| (b["address"].as_str().unwrap().to_string(), b["id"].as_u64().unwrap()))
        .collect()
}

#[test]
fn adopting_an_older_layout_removes_its_maps_and_keeps_flows_and_ids() {
    let vips = format!(
        "[[vip]]\nname = \"web4\"\naddress = \"{VIP4}:80\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n",
        backend_list(0..3, HTTP_PORT)
    );
    let Some(mut lab) = Lab::with_config(3, "", &vips) else {
        return;
    };
    let vip = SocketAddr::new(VIP4.into(), 80);
    lab.wait_for_vip(vip).unwrap();
    let before = ids(&lab.status().unwrap());
    let mut conn = lab.connect(vip).unwrap();
    let backend = keepalive_get(&mut conn).unwrap();

    // The older agent stops (its data path stays pinned), leaving maps of its own layout.
    lab.agent.as_mut().unwrap().stop();
    let pins = Path::new(veer::dataplane::PIN_DIR);
    for (name, kind, key, value) in OLD_LAYOUT {
        let path = pins.join(name);
        run_cmd(&[
            "bpftool",
            "map",
            "create",
            path.to_str().unwrap(),
            "type",
            kind,
            "key",
            &key.to_string(),
            "value",
            &value.to_string(),
            "entries",
            "64",
            "name",
            name,
        ])
        .unwrap();
        assert!(path.exists(), "{name} pinned");
    }

    lab.start_agent(&lab.dir.join("veer.toml")).unwrap();
    let log = lab.agent_log();
    assert!(log.contains("adopting pinned maps"), "{log}");
    let left: Vec<&str> = OLD_LAYOUT
        .iter()
        .map(|(n, ..)| *n)
        .filter(|n| pins.join(n).exists())
        .collect();
    assert!(left.is_empty(), "maps of older layouts left pinned: {left:?}\n{log}");
    for (name, ..) in OLD_LAYOUT {
        assert!(
            log.lines()
                .any(|l| l.contains("removing a pinned map of an older layout") && l.contains(name)),
            "the removal of {name} is logged:\n{log}"
        );
    }
    for name in [lb_common::MAP_FLOWS, lb_common::MAP_NAT_REV, lb_common::MAP_TABLES] {
        assert!(pins.join(name).exists(), "{name} of the current layout kept");
    }
    assert_eq!(ids(&lab.status().unwrap()), before, "every backend keeps its id");

    let watch = lab.watch().unwrap();
    assert_eq!(
        keepalive_get(&mut conn).unwrap(),
        backend,
        "the long-lived connection goes on, on its backend"
    );
    let o = lab.http_load(vip, 200).unwrap();
    assert_eq!((o.ok, o.failed), (200, 0), "{:?}", o.errors);
    lab.assert_no_drops(&watch, &[]);
}
