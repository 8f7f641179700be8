//! Python 3 helpers from `tests/py/` (a real Prometheus parser, Selenium, YAML), run with a
//! bound. A missing interpreter, module or browser fails the test and says how to install
//! them: these tests never skip.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What installs everything these helpers need (`.ci/run` runs it).
pub const INSTALL: &str = "scripts/test-deps.sh";

/// The workspace's root directory.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .to_path_buf()
}

/// Runs `tests/py/<script>` with `args`, feeding it `stdin`, within `limit`; returns its
/// stdout. Fails the test, naming the fix, if `python3` lacks one of `modules`, and with the
/// script's stderr if it fails.
pub fn run(script: &str, args: &[&str], stdin: &str, modules: &[&str], limit: Duration) -> String {
    let imports = format!("import {}", modules.join(", "));
    let check = Command::new("python3").args(["-c", &imports]).output();
    match check {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs the Python modules {modules:?} ({}); install them with {INSTALL} \
             (as .ci/run does)",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => panic!("this test needs python3 ({err}); install it and run {INSTALL}"),
    }
    let dir = std::env::temp_dir();
    let tag = format!("taskmill-py-{}-{}", std::process::id(), unique());
    let (out_path, err_path) = (
        dir.join(format!("{tag}.out")),
        dir.join(format!("{tag}.err")),
    );
    let mut child = Command::new("python3")
        .arg(root().join("tests/py").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).expect("a temp file"))
        .stderr(std::fs::File::create(&err_path).expect("a temp file"))
        .spawn()
        .expect("start python3");
    let mut input = child.stdin.take().expect("piped");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tests/py/{script} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    assert!(
        status.success(),
        "tests/py/{script} failed ({status}):\n{err}\n{out}"
    );
    out
}

fn unique() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The Python interpreters to run CPython-client tests with: `python3` (required: the test
/// fails, saying so, without it), then each 3.12 and 3.13 that pyenv keeps, when present.
/// Each comes with its version, for the test's output.
pub fn interpreters() -> Vec<(PathBuf, String)> {
    let version = |python: &std::path::Path| -> Option<String> {
        let out = Command::new(python).arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let python3 = PathBuf::from("python3");
    let Some(v) = version(&python3) else {
        panic!("this test needs python3 (3.11 or later); install it and run {INSTALL}");
    };
    let mut found = vec![(python3, v)];
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    if let Some(Ok(dir)) = root.map(|r| std::fs::read_dir(r.join("versions"))) {
        let mut more: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("3.12") || name.starts_with("3.13")
            })
            .map(|p| p.join("bin/python3"))
            .collect();
        more.sort();
        for python in more {
            if let Some(v) = version(&python) {
                if !found.iter().any(|(_, seen)| *seen == v) {
                    found.push((python, v));
                }
            }
        }
    }
    found
}
