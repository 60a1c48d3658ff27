// Each test file uses a part of these helpers.
#![allow(dead_code)]

//! Running the `vusb-probe` binary as the guests' scripts will.

use std::process::{Child, Command, Output, Stdio};

/// What one run of `vusb-probe` left: exit status, its JSON result (if it
/// printed one) and its stderr.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub json: Option<serde_json::Value>,
    pub stderr: String,
}

pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vusb-probe"));
    c.args(args);
    c
}

/// A `vusb-probe` running in the background, killed if the test fails
/// before it is collected.
pub struct Background(Option<Child>);

impl Background {
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("not collected yet").id()
    }

    /// Waits for it to exit.
    pub fn finish(mut self) -> Run {
        let child = self.0.take().expect("not collected yet");
        parse(
            child
                .wait_with_output()
                .expect("cannot wait for vusb-probe"),
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn spawn(args: &[&str]) -> Background {
    let child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start vusb-probe");
    Background(Some(child))
}

/// Checks the output contract: at most one line on stdout, a JSON object.
pub fn parse(out: Output) -> Run {
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = if stdout.is_empty() {
        None
    } else {
        assert_eq!(
            stdout.lines().count(),
            1,
            "more than one line on stdout: {stdout}"
        );
        let v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is no JSON ({e}): {stdout}"));
        assert!(v.is_object(), "not a JSON object: {stdout}");
        Some(v)
    };
    Run {
        code: out
            .status
            .code()
            .expect("vusb-probe was killed by a signal"),
        json,
        stderr,
    }
}

pub fn run(args: &[&str]) -> Run {
    parse(command(args).output().expect("cannot start vusb-probe"))
}
