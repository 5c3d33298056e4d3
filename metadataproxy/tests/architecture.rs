//! The module map of `docs/architecture.md`, held against the code: every top-level module
//! sits in a layer, and a module's code (tests left out) names only modules of lower layers.
//! A new module, or an import that runs back up, fails here with the file and the name.

use std::path::{Path, PathBuf};

/// The layers, lowest first, as `docs/architecture.md` draws them.
const LAYERS: &[&[&str]] = &[
    &["clock", "metrics", "notify", "path", "imdsv2"],
    &["identity", "limits", "upstream", "netfilter"],
    &["policy", "builtin", "ebpf"],
    &["roles"],
    &["audit", "telemetry"],
    &["server", "config"],
    &["leftovers"],
    &["admin"],
    &["app"],
    // Test support (the `test-util` feature): fakes and lists the tests share.
    &["testing"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None`: `lib.rs`, `main.rs`).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(name) => Some(name.to_string()),
        None => Some(first),
    }
}

/// The top-level modules a file's code names as `crate::<module>`, outside comments and the
/// test module.
fn named_modules(text: &str) -> Vec<(usize, String)> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for (at, _) in line.match_indices("crate::") {
            let name: String = line[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((n + 1, name));
            }
        }
    }
    found
}

#[test]
fn every_module_is_on_the_map() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut missing: Vec<String> = files
        .iter()
        .filter_map(|f| module_of(f))
        .filter(|m| layer_of(m).is_none())
        .collect();
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "modules missing from the map (LAYERS here and docs/architecture.md): {missing:?}"
    );
}

#[test]
fn imports_run_down_the_layers_only() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, named) in named_modules(&text) {
            if named == module {
                continue;
            }
            match layer_of(&named) {
                Some(layer) if layer < own => {}
                _ => upward.push(format!(
                    "{}:{line}: {module} names crate::{named}",
                    file.strip_prefix(src()).unwrap().display()
                )),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not run down the layers of docs/architecture.md:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_scan_sees_imports_and_skips_comments_and_tests() {
    let text = "use crate::roles::Issuer;\n// crate::app in a comment\nfn f() { crate::metrics::x(); }\n#[cfg(test)]\nmod tests {\n    use crate::app::App;\n}\n";
    let named: Vec<String> = named_modules(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(named, ["roles", "metrics"]);
}

#[test]
fn the_architecture_page_names_every_layer_module() {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md"),
    )
    .expect("docs/architecture.md");
    let missing: Vec<&str> = LAYERS
        .iter()
        .flat_map(|l| l.iter())
        .filter(|m| !page.contains(&format!("`{m}`")))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name: {missing:?}"
    );
}
