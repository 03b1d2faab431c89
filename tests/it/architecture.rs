//! The module layering ARCHITECTURE.md promises, checked on the source:
//! dependencies point one way (edge → manager → store and processor →
//! task), so no module imports one above it and there are no cycles.
//! `schedule` is domain beside `task`: it may import `task`, not the reverse.
//! `worker` (the worker library) is a client: no server-side module.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// The crate's top-level modules each layer may not import.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "manager",
        &[
            "api",
            "auth",
            "server",
            "gateway",
            "config",
            "telemetry",
            "admin",
        ],
    ),
    (
        "store",
        &[
            "api",
            "auth",
            "server",
            "gateway",
            "config",
            "telemetry",
            "admin",
            "manager",
            "processor",
        ],
    ),
    (
        "processor",
        &[
            "api",
            "auth",
            "server",
            "gateway",
            "config",
            "telemetry",
            "admin",
            "manager",
            "store",
        ],
    ),
    (
        "task",
        &[
            "api",
            "auth",
            "server",
            "gateway",
            "config",
            "telemetry",
            "admin",
            "manager",
            "store",
            "processor",
            "metrics",
            "schedule",
        ],
    ),
    // The domain beside `task`: it may import `task` and nothing else.
    (
        "schedule",
        &[
            "api",
            "auth",
            "server",
            "gateway",
            "config",
            "telemetry",
            "admin",
            "manager",
            "store",
            "processor",
            "metrics",
            "errors",
            "codec",
            "pb",
        ],
    ),
    // The worker library is a client of the server: the protocol (`pb`) and
    // `api`'s JSON conversions, nothing of the server's own side.
    (
        "worker",
        &[
            "auth",
            "server",
            "gateway",
            "config",
            "telemetry",
            "admin",
            "manager",
            "store",
            "processor",
            "task",
            "schedule",
            "metrics",
        ],
    ),
    (
        "metrics",
        &[
            "api",
            "auth",
            "server",
            "gateway",
            "config",
            "telemetry",
            "admin",
            "manager",
            "store",
        ],
    ),
    (
        "errors",
        &[
            "api",
            "auth",
            "server",
            "gateway",
            "config",
            "telemetry",
            "admin",
            "manager",
            "store",
            "processor",
            "metrics",
            "task",
            "schedule",
        ],
    ),
];

#[test]
fn no_module_imports_a_layer_above_it() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offences = Vec::new();
    for (module, forbidden) in FORBIDDEN {
        for file in module_files(&source, module) {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for imported in crate_imports(&text) {
                if forbidden.contains(&imported.as_str()) {
                    offences.push(format!(
                        "{} ({module}) imports crate::{imported}",
                        file.strip_prefix(&source).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "layering broken:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_import_scanner_sees_nested_and_inline_paths() {
    let text =
        "use crate::{\n    manager::{A, B},\n    store::C,\n};\nfn f() { crate::config::x(); }\n";
    let found = crate_imports(text);
    let expected: BTreeSet<String> = ["manager", "store", "config"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(found, expected);
}

/// `src/<module>.rs` and everything under `src/<module>/`.
fn module_files(source: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = source.join(format!("{module}.rs"));
    if single.is_file() {
        files.push(single);
    }
    let mut folders = vec![source.join(module)];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no source for module {module}");
    files
}

/// The top-level modules named after `crate::` anywhere in `text`,
/// including each branch of `use crate::{a::.., b}`.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at depth 1 of the braces.
            let mut depth = 1;
            let mut name = String::new();
            let mut at_start = true;
            for character in group.chars() {
                match character {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_start = true,
                    _ => {}
                }
                if depth == 1 && at_start {
                    if character.is_alphanumeric() || character == '_' {
                        name.push(character);
                    } else if !name.is_empty() {
                        found.push(std::mem::take(&mut name));
                        at_start = false;
                    }
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|character| character.is_alphanumeric() || *character == '_')
                .collect();
            found.push(name);
        }
    }
    found
        .into_iter()
        .filter(|name| !name.is_empty() && name != "self")
        .collect()
}
