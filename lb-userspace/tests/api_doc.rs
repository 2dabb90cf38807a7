//! docs/api.md against the code: its endpoint table lists exactly the routes the agent's
//! routers declare (the API and the metrics listener), and its exit-code table exactly the
//! codes of `cli/exit.rs`.

use std::{collections::BTreeSet, fs, path::Path};

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `(METHOD, PATH)` of every `.route("PATH", method(handler))` in `source`.
fn routes(source: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for chunk in source.split(".route(\"").skip(1) {
        let Some((path, rest)) = chunk.split_once('"') else { continue };
        let method = rest
            .trim_start_matches([',', ' '])
            .split('(')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_uppercase();
        out.insert((method, path.to_string()));
    }
    out
}

/// The rows of the markdown table under `heading`, as cells.
fn table(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let section = doc
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/api.md has no {heading:?}"));
    let section = section.split("\n## ").next().unwrap_or("");
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

#[test]
fn the_endpoint_table_lists_every_route_and_only_those() {
    let mut code = routes(&read("src/api/routes.rs"));
    code.extend(routes(&read("src/metrics.rs")));
    assert!(code.len() >= 18, "found only {code:?}");
    let doc: BTreeSet<(String, String)> = table(&read("../docs/api.md"), "## Endpoints")
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let gone: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty() && gone.is_empty(),
        "routes missing from docs/api.md: {undocumented:?}; documented but not served: {gone:?}"
    );
}

#[test]
fn the_exit_code_table_lists_every_code_and_only_those() {
    let code: BTreeSet<u8> = read("src/cli/exit.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("pub const ")?.split_once(": u8 = "))
        .map(|(_, n)| n.trim_end_matches(';').parse().expect("an exit code"))
        .collect();
    for contract in [0, 1, 2, 3, 4, 64] {
        assert!(code.contains(&contract), "cli/exit.rs lacks the contract's {contract}");
    }
    let doc: BTreeSet<u8> = table(&read("../docs/api.md"), "## Exit codes (CLI)")
        .into_iter()
        .map(|row| row[0].parse().expect("a code"))
        .collect();
    assert_eq!(code, doc, "cli/exit.rs vs docs/api.md");
}
