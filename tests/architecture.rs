//! The house's rules, checked on the sources: no module imports (`use crate::..`, `super::..`,
//! or a `crate::` path in code) a module that imports it back, in any crate of the workspace;
//! zoo-kernels depends on candle-core, the gemm crates and rayon only; a model crate depends on
//! zoo-nn (not zoo-core), and its whole dependency tree holds no image codec, plotting, CSV, gzip
//! or font crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A module path (`conv::plan`) for every `.rs` file under `src`, with the file's text before its
/// unit-test module (test code may import what it tests from anywhere).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // A binary's folder (src/bin/NAME) is a crate of its own.
                if path.parent() == Some(src) && path.file_name().unwrap() == "bin" {
                    continue;
                }
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.file_name().unwrap() == "tests.rs"
            {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]\nmod ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.insert(parts.join("::"), code);
        }
    }
    out
}

/// Every path a module names through `crate::` or `super::`, with `use` groups expanded
/// (`use crate::{a::b, c}` gives `crate::a::b` and `crate::c`).
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` declarations, which may span lines and nest braces.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let at_item_start = i == 0 || rest[..i].ends_with(|c: char| c.is_whitespace() || c == '{');
        let Some(end) = rest[i..].find(';') else {
            break;
        };
        if at_item_start {
            let tree = rest[i + 4..i + end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            expand("", &tree, &mut paths);
        }
        rest = &rest[i + end..];
    }
    // Paths written in code: `crate::a::b::f(..)`, `super::x::Y`.
    for start in ["crate::", "super::"] {
        for (i, _) in code.match_indices(start) {
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String = code[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(tail.trim_end_matches(':').to_string());
        }
    }
    paths
}

/// Expands a `use` tree under `prefix`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let join = |p: &str, s: &str| {
        if p.is_empty() {
            s.to_string()
        } else {
            format!("{p}::{s}")
        }
    };
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or(tree).trim();
            out.push(join(prefix, &path.replace(' ', "")));
        }
        Some(open) => {
            let head = tree[..open].trim().trim_end_matches("::").replace(' ', "");
            // Text that only looks like a `use` (in a string or comment) may close no group.
            let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            let mut depth = 0;
            let mut last = 0;
            let mut items = Vec::new();
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&inner[last..i]);
                        last = i + 1;
                    }
                    _ => {}
                }
            }
            items.push(&inner[last..]);
            for item in items.into_iter().filter(|s| !s.trim().is_empty()) {
                expand(&join(prefix, &head), item, out);
            }
        }
    }
}

/// The module a path names: the longest known module prefix of `path` resolved from module
/// `from` (`super` is `from`'s parent).
fn target(path: &str, from: &str, known: &BTreeSet<String>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some(&"super") => {
            let mut b: Vec<&str> = from.split("::").filter(|s| !s.is_empty()).collect();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        _ => return None,
    };
    let mut best = Some(base.join("::"));
    for s in segs {
        base.push(s);
        let m = base.join("::");
        if known.contains(&m) {
            best = Some(m);
        } else {
            break;
        }
    }
    best
}

/// The module graph of one crate: module -> the modules it names (itself, its ancestors and
/// the root excluded: a parent declares its children, which is no import).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (module, code) in &mods {
        let set: BTreeSet<String> = named_paths(code)
            .iter()
            .filter_map(|p| target(p, module, &known))
            .filter(|t| !t.is_empty() && t != module && !module.starts_with(&format!("{t}::")))
            .collect();
        edges.insert(module.clone(), set);
    }
    edges
}

/// The source folders of every crate in the workspace (binaries' folders count as crates).
fn crate_sources() -> Vec<PathBuf> {
    let mut out = vec![root().join("xtask/src")];
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            out.push(src.clone());
            if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
                out.extend(bins.map(|b| b.unwrap().path()).filter(|p| p.is_dir()));
            }
        }
    }
    out
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut found = Vec::new();
    let mut checked = 0;
    for src in crate_sources() {
        let edges = graph(&src);
        checked += edges.len();
        for (a, targets) in &edges {
            for b in targets {
                if a < b && edges.get(b).is_some_and(|t| t.contains(a)) {
                    found.push(format!("{}: {a} <-> {b}", src.display()));
                }
            }
        }
    }
    assert!(
        checked > 60,
        "only {checked} modules found: is the walk broken?"
    );
    assert!(
        found.is_empty(),
        "modules importing each other:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_sees_groups_super_paths_and_inline_paths() {
    let code = "use crate::{\n    a::b::{C, d as D},\n    e,\n};\nuse super::f;\nfn g() { crate::h::i(); }\n";
    let paths = named_paths(code);
    for p in [
        "crate::a::b::C",
        "crate::a::b::d",
        "crate::e",
        "super::f",
        "crate::h::i",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not in {paths:?}");
    }
    let known: BTreeSet<String> = ["a", "a::b", "x", "x::y", "x::z"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(
        target("crate::a::b::C", "x", &known).as_deref(),
        Some("a::b")
    );
    assert_eq!(
        target("super::z::W", "x::y", &known).as_deref(),
        Some("x::z")
    );
    assert_eq!(target("super::Item", "x::y", &known).as_deref(), Some("x"));
}

#[test]
fn zoo_kernels_depends_on_candle_gemm_and_rayon_only() {
    let manifest = std::fs::read_to_string(root().join("crates/zoo-kernels/Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    let names: Vec<&str> = deps
        .lines()
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .collect();
    let allowed = ["candle-core", "rayon", "gemm", "gemm-common", "gemm-f32"];
    assert!(
        names.iter().all(|n| allowed.contains(n)),
        "zoo-kernels depends on {names:?}"
    );
    assert!(names.contains(&"candle-core"));
}

/// The six model crates.
const MODEL_CRATES: [&str; 6] = [
    "zoo-alexnet",
    "zoo-vgg",
    "zoo-nin",
    "zoo-googlenet",
    "zoo-resnet",
    "zoo-densenet",
];

/// Every package in `krate`'s normal (not dev, not build) dependency tree, from `cargo tree`.
fn normal_dependency_tree(krate: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(root())
        .args(["tree", "-p", krate, "-e", "normal", "--prefix", "none"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree -p {krate}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn a_model_crate_stands_on_zoo_nn_and_carries_no_training_side() {
    let forbidden = |name: &str| {
        [
            "image",
            "png",
            "jpeg-decoder",
            "plotters",
            "csv",
            "flate2",
            "dejavu",
            "ab_glyph",
        ]
        .contains(&name)
            || name.starts_with("zune-")
            || name.starts_with("plotters-")
            || name == "zoo-core"
    };
    for krate in MODEL_CRATES {
        let tree = normal_dependency_tree(krate);
        assert!(tree.contains("zoo-nn"), "{krate}: {tree:?}");
        let bad: Vec<&String> = tree.iter().filter(|n| forbidden(n)).collect();
        assert!(bad.is_empty(), "{krate} depends on {bad:?}");
    }
    // The rule has teeth: zoo-core's own tree holds what a model crate must not.
    let core = normal_dependency_tree("zoo-core");
    assert!(
        core.contains("plotters") && core.contains("image"),
        "{core:?}"
    );
}
