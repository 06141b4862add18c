//! The product's modules depend on each other one way: no import circle
//! among the top-level modules of `src/`, and the `# Layout` section of
//! `src/lib.rs` names every module and folder that exists (and nothing
//! else).
//!
//! Run alone with `cargo test --release --test module_graph`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path under `src/`, e.g. `["discovery", "consul"]`.
type ModPath = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` with its module path; the crate roots
/// (`lib.rs`, `main.rs`) are left out.
fn modules() -> Vec<(ModPath, PathBuf)> {
    fn walk(dir: &Path, prefix: &ModPath, out: &mut Vec<(ModPath, PathBuf)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                let mut sub = prefix.clone();
                sub.push(name);
                walk(&path, &sub, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut module = prefix.clone();
                match stem {
                    "lib" | "main" if prefix.is_empty() => continue,
                    "mod" => {}
                    _ => module.push(stem.to_string()),
                }
                out.push((module, path));
            }
        }
    }
    let mut out = Vec::new();
    walk(&src_dir(), &Vec::new(), &mut out);
    out
}

/// Every folder under `src/`, as a module path.
fn folders() -> Vec<ModPath> {
    fn walk(dir: &Path, prefix: &ModPath, out: &mut Vec<ModPath>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let mut sub = prefix.clone();
                sub.push(path.file_name().unwrap().to_str().unwrap().to_string());
                out.push(sub.clone());
                walk(&path, &sub, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&src_dir(), &Vec::new(), &mut out);
    out
}

/// The source without comments, string literals and char literals, so that
/// a path in a doc comment or a message is not taken for a reference.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"'
                    && b[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == b'#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\''), or a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            // Multi-byte UTF-8 passes through whole.
            let len = match c {
                0x00..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            out.push_str(&src[i..i + len]);
            i += len;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first segments named after `crate::` (or `super::` from `module`,
/// resolved to a crate path) in `code`, including those inside
/// `use crate::{a::b, c}` groups.
fn references(module: &ModPath, code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let text = code;
    let mut starts = Vec::new();
    // `super` of a module (a file, or a folder's mod.rs) is its parent; in
    // an inline `mod tests` it is the file's own module, which is in the
    // same top-level module either way.
    let mut parent = module.clone();
    parent.pop();
    for (pat, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(pat) {
            let at = from + pos;
            from = at + pat.len();
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == '$') {
                continue;
            }
            starts.push((base.clone(), from));
        }
    }
    for (base, at) in starts {
        let rest = &text[at..];
        // `super::super::x` climbs once more per `super::`.
        let mut base = base;
        let mut rest = rest;
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        let mut names = Vec::new();
        if let Some(group) = rest.strip_prefix('{') {
            // A use group: top-level items split at commas outside braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        item.push(c);
                    }
                    '}' if depth == 0 => break,
                    '}' => {
                        depth -= 1;
                        item.push(c);
                    }
                    ',' if depth == 0 => {
                        names.push(std::mem::take(&mut item));
                    }
                    _ => item.push(c),
                }
            }
            names.push(item);
        } else {
            names.push(rest.to_string());
        }
        for name in names {
            let first: String = name.trim().chars().take_while(|&c| is_ident(c)).collect();
            if first.is_empty() || first == "self" {
                continue;
            }
            let mut path = base.clone();
            path.push(first);
            found.insert(path[0].clone());
        }
    }
    found
}

/// The graph of top-level modules: which top-level module names which.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let tops: BTreeSet<String> = mods.iter().map(|(m, _)| m[0].clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> =
        tops.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for (module, path) in &mods {
        let src = fs::read_to_string(path).unwrap();
        let top = &module[0];
        for name in references(module, &code_only(&src)) {
            if tops.contains(&name) && &name != top {
                graph.get_mut(top).unwrap().insert(name);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the modules along it (first repeated at the end).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in &graph[node] {
            match marks[next.as_str()] {
                Mark::Open => {
                    let start = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, graph, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks: BTreeMap<String, Mark> = graph.keys().map(|k| (k.clone(), Mark::New)).collect();
    for node in graph.keys() {
        if marks[node.as_str()] == Mark::New {
            if let Some(c) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_modules_import_each_other_one_way() {
    let graph = graph();
    assert!(graph.contains_key("settings") && graph.contains_key("supervisor"));
    if let Some(cycle) = find_cycle(&graph) {
        let edges: Vec<String> = graph
            .iter()
            .map(|(m, to)| {
                format!(
                    "  {m} → {}",
                    to.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        panic!(
            "import circle among src/ modules: {}\nthe graph:\n{}",
            cycle.join(" → "),
            edges.join("\n")
        );
    }
}

/// The intra-doc links (`[`a::b`]`) of the `# Layout` section of lib.rs.
fn layout_links() -> BTreeSet<String> {
    let lib = fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    let docs: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let start = docs
        .iter()
        .position(|l| l.trim() == "# Layout")
        .expect("src/lib.rs has a `# Layout` section");
    let mut links = BTreeSet::new();
    for line in docs[start + 1..].iter().take_while(|l| !l.starts_with('#')) {
        let mut rest = *line;
        while let Some(p) = rest.find("[`") {
            rest = &rest[p + 2..];
            if let Some(e) = rest.find("`]") {
                links.insert(rest[..e].to_string());
                rest = &rest[e + 2..];
            }
        }
    }
    links
}

#[test]
fn the_layout_names_every_module_and_folder() {
    let links = layout_links();
    let existing: BTreeSet<String> = modules()
        .into_iter()
        .map(|(m, _)| m)
        .chain(folders())
        // A module's unit tests (`src/x/tests.rs`) are part of it.
        .filter(|m| m.last().map(String::as_str) != Some("tests"))
        .map(|m| m.join("::"))
        .collect();
    let missing: Vec<_> = existing.difference(&links).collect();
    let unknown: Vec<_> = links.difference(&existing).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "src/lib.rs `# Layout`: modules or folders not named: {missing:?}; named but not in src/: {unknown:?}"
    );
}

#[test]
fn the_reader_sees_through_groups_comments_and_strings() {
    let m: ModPath = vec!["discovery".into(), "consul".into()];
    let code = code_only(
        "use crate::{model::{A, B}, events::Event};\n// crate::status\nlet s = \"crate::tls\";\nlet c = '\"'; fn f() -> crate::render::X { super::Y; crate::policy::z() }",
    );
    let refs = references(&m, &code);
    let expected: BTreeSet<String> = ["model", "events", "render", "policy", "discovery"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(refs, expected);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    assert_eq!(
        find_cycle(&g).unwrap(),
        vec!["a".to_string(), "b".into(), "c".into(), "a".into()]
    );
    g.get_mut("c").unwrap().clear();
    assert!(find_cycle(&g).is_none());
}
