//! The crate's modules point one way: proto <- engine <- gate <- config <- admin <- cli
//! (client beside gate, on proto and engine). A module that names one above
//! it, through `crate::` or enough `super::`s, turns the layers into a
//! circle; this reads the sources and names every such path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("proto", &[]),
    ("engine", &["proto"]),
    ("gate", &["proto", "engine"]),
    ("client", &["proto", "engine"]),
    ("config", &["proto", "engine", "gate"]),
    ("admin", &["proto", "engine", "gate", "config"]),
    (
        "cli",
        &["proto", "engine", "gate", "client", "config", "admin"],
    ),
];

fn allowed(module: &str) -> Option<&'static [&'static str]> {
    ALLOWED.iter().find(|(m, _)| *m == module).map(|(_, a)| *a)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src/` (`engine/shard/mod.rs` is
/// `[engine, shard]`).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules a file's text names, each with its line: the first
/// segment after `crate::` (every segment of a `crate::{a, b::c}` group),
/// and what a run of `super::` reaching the crate root names.
fn named_modules(text: &str, own: &[String]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find(['c', 's']) {
            let tail = &rest[at..];
            let before_ok = at == 0 || !is_ident(rest[..at].chars().next_back().unwrap());
            let (root_reached, after) = if let Some(a) = tail.strip_prefix("crate::") {
                (true, a)
            } else if tail.starts_with("super::") {
                let mut a = tail;
                let mut ups = 0;
                while let Some(next) = a.strip_prefix("super::") {
                    ups += 1;
                    a = next;
                }
                (ups >= own.len(), a)
            } else {
                rest = &rest[at + 1..];
                continue;
            };
            if before_ok && root_reached {
                if let Some(group) = after.strip_prefix('{') {
                    let body = group.split('}').next().unwrap_or("");
                    for item in body.split(',') {
                        let name: String =
                            item.trim().chars().take_while(|&c| is_ident(c)).collect();
                        if !name.is_empty() {
                            found.push((name, n + 1));
                        }
                    }
                } else {
                    let name: String = after.chars().take_while(|&c| is_ident(c)).collect();
                    if !name.is_empty() {
                        found.push((name, n + 1));
                    }
                }
            }
            rest = &rest[at + 1..];
        }
    }
    found
}

#[test]
fn allowed_arrows_have_no_circle() {
    // Depth-first search over the table: a module reached again while it is
    // still being visited closes a circle.
    fn visit(m: &str, stack: &mut Vec<String>) {
        assert!(
            !stack.iter().any(|s| s == m),
            "circle in the allowed arrows: {stack:?} -> {m}"
        );
        stack.push(m.to_string());
        for next in allowed(m).unwrap_or_else(|| panic!("{m} is not in the table")) {
            visit(next, stack);
        }
        stack.pop();
    }
    for (m, _) in ALLOWED {
        visit(m, &mut Vec::new());
    }
}

#[test]
fn modules_name_only_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut seen = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let own = module_path(rel);
        let Some(top) = own.first() else {
            continue; // lib.rs and main.rs sit above every layer
        };
        let Some(may) = allowed(top) else {
            panic!(
                "{} belongs to no layer: add `{top}` to ALLOWED",
                rel.display()
            );
        };
        *seen.entry(top.clone()).or_insert(0) += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for (name, line) in named_modules(&text, &own) {
            if name != *top && allowed(&name).is_some() && !may.contains(&name.as_str()) {
                wrong.push(format!("src/{}:{line}: {top} names {name}", rel.display()));
            }
        }
    }
    for (m, _) in ALLOWED {
        assert!(seen.contains_key(*m), "no source file found for {m}");
    }
    assert!(
        wrong.is_empty(),
        "modules naming a layer above them:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_sees_what_it_must() {
    let engine = vec!["engine".to_string(), "shard".to_string()];
    let names = |text: &str| -> Vec<String> {
        named_modules(text, &engine)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(names("use crate::gate::Backend;"), ["gate"]);
    assert_eq!(
        names("use crate::{proto::x, config::Y};"),
        ["proto", "config"]
    );
    assert_eq!(names("use super::super::cli::Z;"), ["cli"]);
    assert!(names("use super::Shard;").is_empty());
    assert!(names("let x = mycrate::gate::y;").is_empty());
    assert_eq!(names("/// See [`crate::client`]."), ["client"]);
}

/// A cancel by descriptor (or of any request) makes the kernel walk every
/// request in flight on the ring: one per close is quadratic under churn.
/// Operations end by their own `user_data`, or by a shutdown of the socket.
#[test]
fn nothing_cancels_by_scanning_the_ring() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut hits = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if ["CancelBuilder::fd", "CancelBuilder::any", ".all()"]
                .iter()
                .any(|p| code.contains(p))
                && code.contains("Cancel")
            {
                hits.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "cancels that scan the ring:\n{}",
        hits.join("\n")
    );
}
