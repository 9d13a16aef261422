//! The CI-sized soak: a few thousand events through both functions with every fault kind
//! on every service, crashed invocations, a reshard and a runner killed with SIGKILL,
//! checked against the oracle (see `shardline::soak`). Needs the emulators (`make test`
//! starts them); fails with instructions when they are not up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_faults_loses_and_doubles_nothing() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = std::env::temp_dir().join(format!("shardline-soak-{}", std::process::id()));
    let mut cfg = shardline::soak::SoakConfig::new(
        2_000,
        PathBuf::from(env!("CARGO_BIN_EXE_shardline")),
        work.clone(),
    );
    cfg.template = root.join("template.yaml");
    let report = shardline::soak::soak(&cfg)
        .await
        .expect("the soak runs (are the emulators up? `make up`, or run it through `make test`)");
    report.print();
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        report.clean(),
        "the soak found problems: {:#?}",
        report.problems
    );
}
