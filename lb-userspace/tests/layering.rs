//! The agent's layering, checked on its source: the modules import each other without a
//! cycle, only `dataplane/` uses aya, and health, deploy, api, metrics and the CLI never
//! name the dataplane (they reach the maps through the core; only the agent's own core,
//! startup and cleanup do). A module here is a file; a path into
//! a `mod.rs` that re-exports its children resolves to the child that defines the name.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file under `dir`, with its module path (`agent::core`, `config`, `health`).
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .filter(|p| !p.ends_with("main.rs") || p.parent() != Some(src))
        .map(|p| {
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            let text = fs::read_to_string(&p).unwrap();
            (parts.join("::"), strip_comments(&text))
        })
        .collect()
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names after `crate::` or `super::`, as segment lists (`{a, b::c}`
/// groups expanded); `super` is kept as the first segment.
fn paths(text: &str) -> Vec<Vec<String>> {
    fn ident(s: &[u8], i: &mut usize) -> String {
        let start = *i;
        while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_' || s[*i] == b'*') {
            *i += 1;
        }
        String::from_utf8_lossy(&s[start..*i]).into_owned()
    }
    fn skip_ws(s: &[u8], i: &mut usize) {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    }
    /// Parses `seg::seg::{tree, tree}` at `i` onto `prefix`.
    fn tree(s: &[u8], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        loop {
            skip_ws(s, i);
            if *i < s.len() && s[*i] == b'{' {
                *i += 1;
                loop {
                    skip_ws(s, i);
                    if *i >= s.len() || s[*i] == b'}' {
                        *i += 1;
                        return;
                    }
                    tree(s, i, path.clone(), out);
                    skip_ws(s, i);
                    if *i < s.len() && s[*i] == b',' {
                        *i += 1;
                    }
                }
            }
            let id = ident(s, i);
            if id.is_empty() {
                out.push(path);
                return;
            }
            if id != "self" {
                path.push(id);
            }
            if s[*i..].starts_with(b"::") {
                *i += 2;
            } else {
                out.push(path);
                return;
            }
        }
    }
    let s = text.as_bytes();
    let mut out = Vec::new();
    for (start, root) in text
        .match_indices("crate::")
        .map(|(i, _)| (i + 7, "crate"))
        .chain(text.match_indices("super::").map(|(i, _)| (i + 7, "super")))
    {
        let before = start.checked_sub(8).map(|b| s[b]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let mut i = start;
        tree(s, &mut i, vec![root.to_string()], &mut out);
    }
    out
}

fn defines(text: &str, name: &str) -> bool {
    ["fn", "struct", "enum", "type", "const", "trait", "static", "mod"]
        .iter()
        .any(|k| text.contains(&format!("pub {k} {name}")) || text.contains(&format!("pub(crate) {k} {name}")))
}

/// The module a path from module `from` lands in.
fn resolve(mods: &BTreeMap<String, String>, from: &str, path: &[String], from_is_mod_rs: bool) -> Option<String> {
    let mut cur: Vec<String> = if path[0] == "super" {
        let mut p: Vec<String> = from.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
        if !from_is_mod_rs {
            p.pop();
        }
        p
    } else {
        Vec::new()
    };
    for seg in &path[1..] {
        let mut next = cur.clone();
        next.push(seg.clone());
        if mods.contains_key(&next.join("::")) {
            cur = next;
            continue;
        }
        // A name inside `cur`: defined there, or in one of its child files.
        let here = cur.join("::");
        if seg != "*" && !mods.get(&here).is_some_and(|t| defines(t, seg)) {
            let prefix = if here.is_empty() {
                String::new()
            } else {
                format!("{here}::")
            };
            if let Some((child, _)) = mods
                .iter()
                .find(|(m, t)| m.starts_with(&prefix) && m[prefix.len()..].split("::").count() == 1 && defines(t, seg))
            {
                return Some(child.clone());
            }
        }
        return Some(here);
    }
    Some(cur.join("::"))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &mods {
        let is_mod_rs = mods.keys().any(|k| k.starts_with(&format!("{m}::"))) || m.is_empty();
        // A mod.rs's `pub use child::...` lines re-export its children: not dependencies.
        let body: String = text
            .lines()
            .filter(|l| !(is_mod_rs && l.trim_start().starts_with("pub use ") && !l.contains("crate::")))
            .collect::<Vec<_>>()
            .join("\n");
        for p in paths(&body) {
            if let Some(to) = resolve(&mods, m, &p, is_mod_rs)
                && to != *m
                && !to.is_empty()
            {
                edges.entry(m.clone()).or_default().insert(to);
            }
        }
        edges.entry(m.clone()).or_default();
    }
    edges
}

fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let edges = graph();
    assert!(
        edges.contains_key("agent::core") && edges.contains_key("state::reconcile"),
        "{edges:?}"
    );
    assert!(
        edges["api::routes"].contains("agent::core") && edges["agent::core"].contains("deploy::plan"),
        "the parser sees the imports: {edges:#?}"
    );
    if let Some(c) = cycle(&edges) {
        panic!("import cycle: {}\n{edges:#?}", c.join(" -> "));
    }
}

#[test]
fn only_the_dataplane_uses_aya_and_health_deploy_api_metrics_never_reach_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    for (m, text) in &mods {
        if !m.starts_with("dataplane") {
            assert!(!text.contains("aya"), "{m} uses aya: only dataplane/ may");
        }
    }
    for (m, to) in graph() {
        let outside = ["health", "deploy", "api", "metrics", "cli", "state", "config"];
        if to.iter().any(|t| t.starts_with("dataplane")) {
            assert!(
                !outside.iter().any(|o| m == *o || m.starts_with(&format!("{o}::"))),
                "{m} reaches the dataplane: health, deploy, api, metrics and the CLI go through the core"
            );
        }
    }
}
