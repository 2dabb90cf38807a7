//! docs/config.md lists every key the config file accepts. The keys come from the config
//! types themselves: they reject unknown fields, and serde's rejection names every field a
//! table accepts, so probing each table with an unknown key walks the whole schema. A
//! key added to the types and not to the document fails this test.

use std::collections::BTreeSet;

/// The TOML for `value` placed at `path` (each step a table or an array of tables).
fn nest(path: &[(String, bool)], value: &str) -> String {
    let mut text = value.to_string();
    for (i, (key, array)) in path.iter().enumerate().rev() {
        let wrapped = if *array { format!("[{text}]") } else { text };
        text = if i == 0 {
            format!("{key} = {wrapped}")
        } else {
            format!("{{ {key} = {wrapped} }}")
        };
    }
    text
}

/// The fields the table at `path` accepts, or None when it is not a table of known fields.
fn fields_at(path: &[(String, bool)]) -> Option<Vec<String>> {
    let probe = "veer_unknown_probe";
    let text = if path.is_empty() {
        format!("{probe} = 1\n")
    } else {
        nest(path, &format!("{{ {probe} = 1 }}"))
    };
    let err = veer::config::parse(&text, "probe.toml").err()?;
    let msg = err.message;
    let rest = msg.split_once(&format!("unknown field `{probe}`, expected "))?.1;
    Some(rest.split('`').skip(1).step_by(2).map(str::to_string).collect())
}

/// Every key below `path`, dotted (`vip.pool.backends.weight`).
fn walk(path: &mut Vec<(String, bool)>, out: &mut BTreeSet<String>) {
    let Some(fields) = fields_at(path) else { return };
    for f in fields {
        let dotted: Vec<&str> = path.iter().map(|(k, _)| k.as_str()).chain([f.as_str()]).collect();
        out.insert(dotted.join("."));
        // A nested table is probed inline, then as an array of tables (`[[vip.pool]]`).
        for array in [false, true] {
            path.push((f.clone(), array));
            let table = fields_at(path).is_some();
            if table {
                walk(path, out);
            }
            path.pop();
            if table {
                break;
            }
        }
    }
}

/// Documented keys: the first `code` cell of each table row, and the sections (`[agent]`,
/// `[[vip]]`) of the headings. Health keys are documented once as `health.KEY` for both
/// `vip.health` and `vip.pool.health`.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")).unwrap();
    let rows = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(k, _)| k.to_string()));
    let sections = doc
        .lines()
        .filter_map(|l| l.strip_prefix("## `"))
        .filter_map(|l| l.split_once('`').map(|(k, _)| k.trim_matches(['[', ']']).to_string()))
        .filter(|k| !k.contains('.'));
    rows.chain(sections).collect()
}

fn doc_name(key: &str) -> String {
    for prefix in ["vip.pool.health.", "vip.health."] {
        if let Some(rest) = key.strip_prefix(prefix) {
            return format!("health.{rest}");
        }
    }
    key.to_string()
}

#[test]
fn every_config_key_is_in_docs_config_md() {
    let mut keys = BTreeSet::new();
    walk(&mut Vec::new(), &mut keys);
    // The walk must have reached the nested tables, or it proves nothing.
    for k in [
        "agent.flow_capacity",
        "vip.pool.backends.weight",
        "vip.health.rise",
        "vip.pool.health.kind",
    ] {
        assert!(keys.contains(k), "the schema walk missed {k}: {keys:#?}");
    }
    let doc = documented();
    let missing: Vec<&String> = keys.iter().filter(|k| !doc.contains(&doc_name(k))).collect();
    assert!(missing.is_empty(), "keys missing from docs/config.md: {missing:?}");
    // And the document names no key that the config rejects.
    let known: BTreeSet<String> = keys.iter().map(|k| doc_name(k)).collect();
    let stale: Vec<&String> = doc.iter().filter(|k| !known.contains(*k)).collect();
    assert!(
        stale.is_empty(),
        "docs/config.md documents keys the config does not accept: {stale:?}"
    );
}
