//! The `task-bench` binary's command line: `--help` prints the flags and
//! starts nothing; an unknown flag is a usage error. One short run
//! (`--delayed --quick`) checks that a figure is printed end to end.

use std::{
    io::Read as _,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

const TASK_BENCH: &str = env!("CARGO_BIN_EXE_task-bench");

/// Far more than parsing a command line takes, far less than any benchmark.
const QUICK: Duration = Duration::from_secs(5);

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs task-bench with `arguments`; fails the test (after killing it) if
/// it is still running after `QUICK`, as a benchmark would be.
fn task_bench(arguments: &[&str]) -> Output {
    task_bench_within(arguments, QUICK)
}

/// Runs task-bench with `arguments`; fails the test (after killing it) if
/// it is still running after `limit`.
fn task_bench_within(arguments: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(TASK_BENCH)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("task-bench starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for task-bench") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("task-bench {arguments:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The output of a command line error, of help or of one short run fits
    // the pipes, so the child never blocked writing it.
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)
        .expect("stdout");
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("stderr");
    Output {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn help_lists_the_flags_and_runs_nothing() {
    for flag in ["--help", "-h"] {
        let output = task_bench(&[flag]);
        let help = &output.stdout;
        assert!(
            output.status.success(),
            "{flag}: {:?}\n{help}",
            output.status
        );
        for listed in [
            "Usage: task-bench",
            "--quick",
            "--only-create",
            "--only-actor",
            "--stores",
            "--retained-rss",
            "--delayed",
            "--default-logging",
            "--binary",
            "--tasks",
            "--data-bytes",
            "TASK_BENCH_POSTGRES",
        ] {
            assert!(
                help.contains(listed),
                "{flag} does not mention {listed}:\n{help}"
            );
        }
        // A benchmark would have printed its figures.
        assert!(
            !help.contains("cores, scale"),
            "{flag} started the benchmark:\n{help}"
        );
    }
}

#[test]
fn an_unknown_flag_is_a_usage_error_that_names_it() {
    let output = task_bench(&["--bogus"]);
    let error = &output.stderr;
    assert_eq!(output.status.code(), Some(2), "{error}");
    assert!(error.contains("--bogus"), "{error}");
    assert!(error.contains("--help"), "{error}");
    assert!(output.stdout.is_empty(), "it printed figures");
}

#[test]
fn two_runs_at_once_are_a_usage_error() {
    let output = task_bench(&["--stores", "--only-actor"]);
    let error = &output.stderr;
    assert_eq!(output.status.code(), Some(2), "{error}");
    assert!(
        error.contains("--stores") && error.contains("--only-actor"),
        "{error}"
    );
}

#[test]
fn delayed_quick_prints_its_figures() {
    // 10 000 tasks per phase in a debug build: a few seconds of creates,
    // then tasks due over 2 s; the limit is for a loaded machine.
    let output = task_bench_within(&["--delayed", "--quick"], Duration::from_secs(180));
    let printed = &output.stdout;
    assert!(
        output.status.success(),
        "{:?}\n{printed}\n{}",
        output.status,
        output.stderr
    );
    for line in [
        "queue_capacity 10000",
        "| delayed: `run_after` 10 to 11 min ahead, pending |",
        "| baseline: plain pending, no `run_after`, no free slot |",
        "| baseline: retained finished",
        "| delayed: `started_at − run_after` | 10000 |",
        "| baseline, plain: `started_at − created_at` | 2000 |",
    ] {
        assert!(printed.contains(line), "no {line:?} in:\n{printed}");
    }
}
