//! The documentation knows everything the product knows (issue 24): every
//! environment variable of the command line (`settings::Cli`, through
//! clap's `CommandFactory`) has its row in `docs/variables.md`, and every
//! tag of the model (`model::KNOWN_TAGS`) has its row in the front page's
//! tag table (`README.md`) and its entry in `docs/tags.md`; each exactly
//! once, and nothing is documented that the product does not know. No root
//! needed: `cargo test --release --test docs`.

use std::collections::BTreeMap;
use std::path::Path;

use clap::CommandFactory;
use haproxy_supervisor::model::KNOWN_TAGS;
use haproxy_supervisor::rules::RULE_TAGS;
use haproxy_supervisor::settings::Cli;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every environment variable clap reads, with its flag.
fn clap_variables() -> BTreeMap<String, String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeMap<String, String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                let flag = arg
                    .get_long()
                    .map(|l| format!("--{l}"))
                    .unwrap_or_else(|| arg.get_id().to_string());
                out.insert(env.to_string_lossy().into_owned(), flag);
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(&Cli::command(), &mut out);
    out
}

/// The backquoted names in the first cell of each table row of `text`,
/// with how many rows name each (header and separator rows name none).
fn first_cell_names(text: &str) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('|') {
            continue;
        }
        let first = line.split('|').nth(1).unwrap_or_default();
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 && !part.is_empty() {
                *names.entry(part.to_string()).or_insert(0) += 1;
            }
        }
    }
    names
}

#[test]
fn every_variable_has_one_row_in_docs_variables_md() {
    let known = clap_variables();
    // A sanity floor: the walk found the options (44 when written).
    assert!(
        known.len() >= 40,
        "clap lists only {} variables: {known:?}",
        known.len()
    );
    let rows = first_cell_names(&read("docs/variables.md"));
    let mut problems = Vec::new();
    for (var, flag) in &known {
        match rows.get(var) {
            None => problems.push(format!(
                "{var} ({flag}) is not documented: add its row to docs/variables.md \
                 (| `{var}` | `{flag}` | default | meaning |)"
            )),
            Some(1) => {}
            Some(n) => problems.push(format!(
                "{var} has {n} rows in docs/variables.md; describe it once"
            )),
        }
    }
    for var in rows.keys() {
        if !known.contains_key(var) {
            problems.push(format!(
                "docs/variables.md documents {var}, which the command line does not know"
            ));
        }
    }
    // Described in one place: no other page has a table row for it.
    for page in [
        "README.md",
        "docs/tags.md",
        "docs/usage.md",
        "docs/reloads.md",
        "docs/tls.md",
        "docs/consul.md",
        "docs/operations.md",
    ] {
        let other = first_cell_names(&read(page));
        for var in known.keys() {
            if other.contains_key(var) {
                problems.push(format!(
                    "{page} has a table row for {var}; its description belongs in docs/variables.md only"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn every_tag_is_in_the_tag_table_and_docs_tags_md() {
    assert!(!KNOWN_TAGS.is_empty());
    let table = first_cell_names(&read("README.md"));
    let tags_md = read("docs/tags.md");
    let mut problems = Vec::new();
    let headers = [
        "HAPROXY.REQUEST.HEADER.<Name>",
        "HAPROXY.RESPONSE.HEADER.<Name>",
    ];
    for tag in KNOWN_TAGS.iter().chain(RULE_TAGS).chain(&headers) {
        match table.get(*tag) {
            None => problems.push(format!(
                "{tag} is not in the tag table of README.md (| `{tag}` | does | values | default |)"
            )),
            Some(1) => {}
            Some(n) => problems.push(format!("{tag} has {n} rows in README.md's tag table")),
        }
        let entry = format!("- **`{tag}`**");
        match tags_md.matches(&entry).count() {
            0 => problems.push(format!(
                "{tag} has no entry in docs/tags.md (a list item starting {entry}:)"
            )),
            1 => {}
            n => problems.push(format!("{tag} has {n} entries in docs/tags.md")),
        }
    }
    for name in table.keys().filter(|n| n.starts_with("HAPROXY.")) {
        if !KNOWN_TAGS.contains(&name.as_str())
            && !RULE_TAGS.contains(&name.as_str())
            && !headers.contains(&name.as_str())
        {
            problems.push(format!(
                "README.md's tag table lists {name}, which the model does not know"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}
