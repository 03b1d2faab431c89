//! The manual against the binaries: the settings tables of
//! docs/configuration.md against `task-processor --help` and
//! `--print-config`, taskctl's global flags in docs/taskctl.md against
//! `taskctl --help`, and every relative link of README.md and docs/ against
//! the files and headings it points to. A table that drifts from the binary
//! fails here, naming the setting.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use task_processor::config::SETTINGS;

use crate::support::DEADLINE;

const SERVER: &str = env!("CARGO_BIN_EXE_task-processor");
const TASKCTL: &str = env!("CARGO_BIN_EXE_taskctl");

/// The header of the settings table in docs/configuration.md.
const SETTINGS_HEADER: &str = "| flag | environment | config key | default | meaning |";
/// The header of the table of flags that are not settings.
const OTHER_FLAGS_HEADER: &str = "| flag | meaning |";
/// The header of taskctl's global flags table in docs/taskctl.md.
const TASKCTL_HEADER: &str = "| flag | environment | default | meaning |";

/// The front door stays short; the rest belongs in docs/.
const README_MAX_LINES: usize = 300;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repository().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Runs a binary with an empty environment (so no setting of whoever runs
/// the tests leaks in) in an empty directory, and returns its stdout. Fails
/// the test when it exits with anything but 0.
fn run(binary: &str, args: &[&str]) -> Result<String, String> {
    let directory = tempfile::tempdir().expect("temporary directory");
    let output = assert_cmd::Command::new(binary)
        .args(args)
        .env_clear()
        .current_dir(directory.path())
        .timeout(DEADLINE)
        .output()
        .map_err(|error| format!("{binary} {args:?} did not run: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{binary} {args:?} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout).map_err(|error| format!("{binary} {args:?}: {error}"))
}

/// Fails with every problem found, one per line, under `heading`.
fn fail_on(problems: Vec<String>, heading: &str) {
    assert!(
        problems.is_empty(),
        "{heading} ({} problems):\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}

/// An optional value as a reader wants it: `value`, or "none".
fn shown(value: Option<&str>) -> String {
    value.map_or_else(|| "none".to_owned(), |value| format!("`{value}`"))
}

// ---------------------------------------------------------------------------
// Markdown: tables, code spans, headings, links.

/// The rows of the table whose header line is exactly `header`, each split
/// into trimmed cells. Panics when there is no such table.
fn table(text: &str, header: &str, file: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|line| line.trim() != header);
    assert!(
        lines.next().is_some(),
        "{file} has no table with the header {header}"
    );
    let separator = lines.next().unwrap_or_default();
    assert!(
        separator.starts_with("|---"),
        "{file}: the table {header} has no separator line"
    );
    lines
        .take_while(|line| line.starts_with('|'))
        .map(split_row)
        .collect()
}

/// Splits `| a | b |` into cells; a `|` inside a code span is not a border.
fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut in_code = false;
    for character in inner.chars() {
        match character {
            '`' => {
                in_code = !in_code;
                cell.push(character);
            }
            '|' if !in_code => cells.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(character),
        }
    }
    cells.push(cell.trim().to_owned());
    cells
}

/// The contents of every `code span` of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The value of a cell that is one code span and nothing else: a literal.
/// Anything else (words, or words around code) is prose.
fn literal(cell: &str) -> Option<String> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then(|| inner.to_owned())
}

/// A flag cell: `--name VALUE`, or several spans such as `-o`, `--output
/// FORMAT`. Returns the names and the value name, if any.
fn flag_cell(cell: &str) -> (Vec<String>, Option<String>) {
    let mut names = Vec::new();
    let mut value = None;
    for span in code_spans(cell) {
        let mut words = span.split_whitespace();
        if let Some(name) = words.next() {
            names.push(name.to_owned());
        }
        if let Some(word) = words.next() {
            value = Some(word.to_owned());
        }
    }
    (names, value)
}

/// The text of a markdown file without fenced code blocks, so that `#` lines
/// and brackets in examples are not taken for headings and links.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut in_fence = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                return false;
            }
            !in_fence
        })
        .collect()
}

/// A line with its inline code spans removed.
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect()
}

/// The anchors GitHub gives the headings of a markdown file: the heading's
/// text lowercased, without punctuation, spaces turned into hyphens; a
/// repeated anchor gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for line in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug: String = line[hashes..]
            .trim()
            .chars()
            .filter_map(|character| match character {
                ' ' => Some('-'),
                '-' | '_' => Some(character),
                _ if character.is_alphanumeric() => Some(character),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(match *count {
            0 => slug,
            n => format!("{slug}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// The targets of the inline links `[text](target)` of a markdown file,
/// outside code, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut in_fence = false;
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find(')') else { break };
            found.push((index + 1, rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    found
}

// ---------------------------------------------------------------------------
// `--help`: the options clap prints.

#[derive(Debug, Default)]
struct HelpOption {
    /// `-v`, `--verbose`: every name of the option.
    names: Vec<String>,
    /// The value name, `HOST:PORT` for `--listen <HOST:PORT>`.
    value: Option<String>,
    /// `[env: A, B]`, written by hand or by clap (`[env: NAME=]`).
    env: Vec<String>,
    /// `[default: …]`.
    default: Option<String>,
}

/// The options of a `--help` page (the long form: each option on its own
/// line, its description indented below).
fn help_options(help: &str) -> Vec<HelpOption> {
    let mut options: Vec<HelpOption> = Vec::new();
    let mut descriptions: Vec<String> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line == "Options:" {
            in_options = true;
            continue;
        }
        if !in_options {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent == 0 {
            break; // "Examples:" and the like: the options are over.
        }
        if (1..=6).contains(&indent) && line.trim_start().starts_with('-') {
            // `-v, --verbose...`, `--listen <HOST:PORT>`; in the short
            // layout the description follows on the same line.
            let mut option = HelpOption::default();
            let mut description = String::new();
            for word in line.split_whitespace() {
                if !description.is_empty() {
                    description.push(' ');
                    description.push_str(word);
                } else if let Some(value) = word.strip_prefix('<') {
                    option.value = Some(value.trim_end_matches('>').to_owned());
                } else if word.starts_with('-') && option.value.is_none() {
                    let name = word.trim_end_matches(',').trim_end_matches("...");
                    option.names.push(name.to_owned());
                } else {
                    description.push_str(word);
                }
            }
            options.push(option);
            descriptions.push(description);
        } else if let Some(description) = descriptions.last_mut() {
            description.push(' ');
            description.push_str(line.trim());
        }
    }
    for (option, description) in options.iter_mut().zip(&descriptions) {
        option.env = bracketed(description, "[env: ")
            .map(|list| {
                list.split(',')
                    .map(|name| name.trim().split('=').next().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        option.default = bracketed(description, "[default: ").map(str::to_owned);
    }
    options
}

/// The text between `opening` and the next `]`.
fn bracketed<'a>(text: &'a str, opening: &str) -> Option<&'a str> {
    let start = text.find(opening)? + opening.len();
    let end = text[start..].find(']')? + start;
    Some(text[start..end].trim())
}

fn by_name(options: &[HelpOption]) -> BTreeMap<&str, &HelpOption> {
    options
        .iter()
        .flat_map(|option| option.names.iter().map(move |name| (name.as_str(), option)))
        .collect()
}

/// Compares a table's flags with a help page's, both ways.
fn compare_flag_names(
    documented: &BTreeSet<String>,
    help: &BTreeMap<&str, &HelpOption>,
    file: &str,
    command: &str,
    problems: &mut Vec<String>,
) {
    for name in help.keys() {
        if !documented.contains(*name) {
            problems.push(format!(
                "{file} has no row for {name}, which `{command} --help` lists"
            ));
        }
    }
    for name in documented {
        if !help.contains_key(name.as_str()) {
            problems.push(format!(
                "{file} has a row for {name}, which `{command} --help` does not list"
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// `--print-config`: the effective settings, one `key: value` line each.

fn print_config(args: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut all = vec!["--print-config"];
    all.extend_from_slice(args);
    let printed = run(SERVER, &all)?;
    // A section (`tls:`, `auth:`) prints its settings indented under it:
    // they are `tls.cert_file` and so on.
    let mut settings = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in printed.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if !line.starts_with(' ') {
            section = value.is_empty().then(|| key.to_owned());
            if section.is_none() {
                settings.insert(key.to_owned(), value.to_owned());
            }
        } else if let Some(section) = &section {
            settings.insert(format!("{section}.{key}"), value.to_owned());
        }
    }
    Ok(settings)
}

/// One row of the settings table.
struct SettingRow {
    flag: String,
    value_name: Option<String>,
    env: BTreeSet<String>,
    key: String,
    default: String,
}

fn setting_rows(text: &str, file: &str) -> Vec<SettingRow> {
    table(text, SETTINGS_HEADER, file)
        .into_iter()
        .map(|cells| {
            assert_eq!(
                cells.len(),
                5,
                "{file}: a settings row needs 5 cells: {cells:?}"
            );
            let (names, value_name) = flag_cell(&cells[0]);
            assert_eq!(names.len(), 1, "{file}: one flag per setting: {cells:?}");
            SettingRow {
                flag: names[0].clone(),
                value_name,
                env: code_spans(&cells[1]).into_iter().collect(),
                key: literal(&cells[2]).unwrap_or_else(|| {
                    panic!("{file}: the config key is one code span: {cells:?}")
                }),
                default: cells[3].clone(),
            }
        })
        .collect()
}

#[test]
fn the_settings_tables_match_help_and_print_config() {
    const FILE: &str = "docs/configuration.md";
    let text = read(FILE);
    let rows = setting_rows(&text, FILE);
    let other_flags: Vec<String> = table(&text, OTHER_FLAGS_HEADER, FILE)
        .iter()
        .flat_map(|cells| flag_cell(&cells[0]).0)
        .collect();

    let help = run(SERVER, &["--help"]).expect("task-processor --help");
    let options = help_options(&help);
    let help = by_name(&options);
    let defaults = print_config(&[]).expect("task-processor --print-config");
    let again = print_config(&[]).expect("task-processor --print-config, again");
    let mut problems = Vec::new();

    // Each flag and key once.
    let mut rows_of: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &rows {
        *rows_of.entry(&row.flag).or_default() += 1;
        *rows_of.entry(&row.key).or_default() += 1;
    }
    for (name, count) in rows_of {
        if count > 1 {
            problems.push(format!("{FILE} has {count} rows for {name}"));
        }
    }

    // Every flag, both ways.
    let documented: BTreeSet<String> = rows
        .iter()
        .map(|row| row.flag.clone())
        .chain(other_flags)
        .collect();
    compare_flag_names(&documented, &help, FILE, "task-processor", &mut problems);

    // Every config key, both ways.
    let keys: BTreeSet<&str> = rows.iter().map(|row| row.key.as_str()).collect();
    for key in defaults.keys() {
        if !keys.contains(key.as_str()) {
            problems.push(format!(
                "{FILE} has no row for the config key {key}, which `--print-config` prints"
            ));
        }
    }
    for key in &keys {
        if !defaults.contains_key(*key) {
            problems.push(format!(
                "{FILE} has a row for the config key {key}, which `--print-config` does not print"
            ));
        }
    }

    for row in &rows {
        let key = &row.key;
        // The row's flag is the key's, as the configuration defines them.
        match SETTINGS.iter().find(|setting| setting.key == key.as_str()) {
            Some(setting) if setting.flag != row.flag => problems.push(format!(
                "{key}: {FILE} gives the flag {}, but the setting's flag is {}",
                row.flag, setting.flag
            )),
            Some(_) => {}
            None => problems.push(format!("{key}: not a setting of task_processor::config")),
        }
        let Some(option) = help.get(row.flag.as_str()) else {
            continue; // Reported above.
        };
        if row.value_name != option.value {
            problems.push(format!(
                "{key}: {FILE} names the value of {} {}, `--help` {}",
                row.flag,
                shown(row.value_name.as_deref()),
                shown(option.value.as_deref())
            ));
        }
        let help_env: BTreeSet<String> = option.env.iter().cloned().collect();
        if row.env != help_env {
            problems.push(format!(
                "{key}: {FILE} gives the environment {:?}, `--help` says {:?}",
                row.env, help_env
            ));
        }

        let varies = defaults.get(key) != again.get(key);
        match literal(&row.default) {
            // Prose only where no value can be written down.
            None if !varies => problems.push(format!(
                "{key}: {FILE} writes the default in words ({}), but it is always {:?}: \
                 write it as one code span",
                row.default,
                defaults.get(key).map(String::as_str).unwrap_or_default()
            )),
            None => {}
            Some(_) if varies => problems.push(format!(
                "{key}: its default differs from run to run ({:?}, {:?}): {FILE} must \
                 describe it in words, not as the value {}",
                defaults.get(key).map(String::as_str).unwrap_or_default(),
                again.get(key).map(String::as_str).unwrap_or_default(),
                row.default
            )),
            Some(default) => {
                // The text `--help` shows…
                if option.default.as_deref() != Some(default.as_str()) {
                    problems.push(format!(
                        "{key}: {FILE} says the default is `{default}`, `--help` says {}",
                        shown(option.default.as_deref())
                    ));
                }
                // …and what the binary makes of it: given as the flag, the
                // value must print exactly as the built-in default does.
                match print_config(&[row.flag.as_str(), default.as_str()]) {
                    Ok(given) if given.get(key) != defaults.get(key) => problems.push(format!(
                        "{key}: {FILE} says the default is `{default}`; `{} {default}` \
                         prints {key}: {}, but the built-in default prints {key}: {}",
                        row.flag,
                        given.get(key).map(String::as_str).unwrap_or("nothing"),
                        defaults.get(key).map(String::as_str).unwrap_or("nothing"),
                    )),
                    Ok(_) => {}
                    Err(error) => problems.push(format!(
                        "{key}: {FILE} says the default is `{default}`, which the binary \
                         refuses: {error}"
                    )),
                }
            }
        }
    }
    fail_on(
        problems,
        "docs/configuration.md drifted from task-processor",
    );
}

#[test]
fn the_taskctl_global_flags_table_matches_its_help() {
    const FILE: &str = "docs/taskctl.md";
    let text = read(FILE);
    let help = run(TASKCTL, &["--help"]).expect("taskctl --help");
    let options = help_options(&help);
    let help = by_name(&options);
    let mut problems = Vec::new();
    let rows = table(&text, TASKCTL_HEADER, FILE);
    let documented: BTreeSet<String> = rows
        .iter()
        .flat_map(|cells| flag_cell(&cells[0]).0)
        .collect();
    compare_flag_names(&documented, &help, FILE, "taskctl", &mut problems);

    for cells in &rows {
        assert_eq!(
            cells.len(),
            4,
            "{FILE}: a flag row needs 4 cells: {cells:?}"
        );
        let (names, value_name) = flag_cell(&cells[0]);
        let Some(option) = names.iter().find_map(|name| help.get(name.as_str())) else {
            continue; // Reported above.
        };
        let flag = names.join(", ");
        if value_name != option.value {
            problems.push(format!(
                "{flag}: {FILE} names its value {}, `taskctl --help` {}",
                shown(value_name.as_deref()),
                shown(option.value.as_deref())
            ));
        }
        let env: Vec<String> = code_spans(&cells[1]);
        if env != option.env {
            problems.push(format!(
                "{flag}: {FILE} gives the environment {env:?}, `taskctl --help` says {:?}",
                option.env
            ));
        }
        let default = literal(&cells[2]);
        if default != option.default {
            problems.push(format!(
                "{flag}: {FILE} says the default is {}, `taskctl --help` says {}",
                shown(default.as_deref()),
                shown(option.default.as_deref())
            ));
        }
    }
    fail_on(problems, "docs/taskctl.md drifted from taskctl");
}

/// README.md and every file of docs/.
fn manual() -> Vec<(String, String)> {
    let mut files = vec!["README.md".to_owned()];
    let mut chapters: Vec<String> = std::fs::read_dir(repository().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("a docs/ entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    chapters.sort();
    files.extend(chapters);
    files
        .into_iter()
        .map(|file| {
            let text = read(&file);
            (file, text)
        })
        .collect()
}

#[test]
fn every_relative_link_of_the_manual_reaches_a_file_and_heading() {
    let mut problems = Vec::new();
    for (file, text) in manual() {
        let directory = Path::new(&file).parent().unwrap_or(Path::new(""));
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked: PathBuf = if path.is_empty() {
                PathBuf::from(&file)
            } else {
                directory.join(path)
            };
            let full = repository().join(&linked);
            if !full.exists() {
                problems.push(format!(
                    "{file}:{line}: ({target}) points to {}, which does not exist",
                    linked.display()
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let headings = std::fs::read_to_string(&full)
                .map(|text| anchors(&text))
                .unwrap_or_default();
            if !headings.contains(anchor) {
                problems.push(format!(
                    "{file}:{line}: ({target}): {} has no heading with the anchor #{anchor}",
                    linked.display()
                ));
            }
        }
    }
    fail_on(problems, "README.md and docs/ have broken links");
}

#[test]
fn the_readme_stays_a_front_door() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail to a \
         chapter of docs/ and link it"
    );
}

#[test]
fn anchors_follow_github() {
    let text = "# Title\n## CreateTask and GetTask: a `demo` task\n## …the disk fills up (SQLite)\n\
                ```sh\n# not a heading\n```\n## Errors\n### Errors\n## -o yaml and -o json\n";
    let expected: BTreeSet<String> = [
        "title",
        "createtask-and-gettask-a-demo-task",
        "the-disk-fills-up-sqlite",
        "errors",
        "errors-1",
        "-o-yaml-and--o-json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(anchors(text), expected);
}

#[test]
fn help_pages_are_parsed_in_both_layouts() {
    let long = "Usage: x [OPTIONS]\n\nOptions:\n  -v, --verbose...\n          More output: -v, -vv\n\n      \
                --listen <HOST:PORT>\n          Address [env: A, B] [default: 0.0.0.0:1]\n\n      \
                --addr <ADDRESS>\n          Server\n          \n          [env: X_ADDR=]\n          \
                [default: http://h:1]\n\nExamples:\n  x --listen 1\n";
    let short = "Options:\n  -v, --verbose...      More output: -v, -vv\n      \
                 --listen <HOST:PORT>  Address [env: A, B] [default: 0.0.0.0:1]\n";
    for (layout, page) in [("long", long), ("short", short)] {
        let options = help_options(page);
        let names: Vec<&str> = options
            .iter()
            .flat_map(|option| option.names.iter().map(String::as_str))
            .collect();
        assert_eq!(&names[..3], ["-v", "--verbose", "--listen"], "{layout}");
        let listen = &options[1];
        assert_eq!(listen.value.as_deref(), Some("HOST:PORT"), "{layout}");
        assert_eq!(listen.env, ["A", "B"], "{layout}");
        assert_eq!(listen.default.as_deref(), Some("0.0.0.0:1"), "{layout}");
    }
    let addr = &help_options(long)[2];
    assert_eq!(addr.env, ["X_ADDR"]);
    assert_eq!(addr.default.as_deref(), Some("http://h:1"));
}
