//! Data-parallel launching through the `zoo` binary, without an engine: the convenience
//! launcher's command line, and the clear errors of a launch this build or device cannot
//! serve (torchrun on the CPU, mpirun without the `mpi` feature, malformed variables); a
//! training matrix run by two in-process ranks. The two-process MPI run against one process is
//! `.ci/run`'s `cargo xtask dist-check` stage.

use std::ffi::OsString;
use std::process::Command;

use zoo_cli::launcher::without_flag;

/// `zoo train nin-mnist ...` with `env` set and every launcher variable of this test process
/// removed; returns (success, stderr).
fn zoo_train(env: &[(&str, &str)], extra: &[&str]) -> (bool, String) {
    let run_dir = zoo_core::testing::scratch_dir("launch");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zoo"));
    cmd.args(["train", "nin-mnist", "--epochs", "1", "--device", "cpu"])
        .args(extra)
        .arg("--run-dir")
        .arg(&*run_dir);
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "PMI_RANK",
        "PMI_SIZE",
        "PMIX_RANK",
        "PMIX_SIZE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("zoo runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_launcher_repeats_the_command_without_its_flag() {
    let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    assert_eq!(
        without_flag(args(&[
            "train",
            "resnet18",
            "--nproc-per-node",
            "2",
            "--epochs",
            "1"
        ]))
        .unwrap(),
        args(&["train", "resnet18", "--epochs", "1"])
    );
    assert_eq!(
        without_flag(args(&["train", "--nproc-per-node=4", "nin"])).unwrap(),
        args(&["train", "nin"])
    );
    assert!(without_flag(args(&["train", "--nproc-per-node"])).is_err());
}

#[test]
fn launches_this_build_cannot_serve_are_refused_with_what_to_do() {
    let torchrun = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];
    let (ok, err) = zoo_train(&torchrun, &[]);
    assert!(!ok && err.contains("mpirun -np 2 zoo train"), "{err}");

    let (ok, err) = zoo_train(&[("WORLD_SIZE", "2"), ("RANK", "0")], &[]);
    assert!(!ok && err.contains("MASTER_ADDR is not"), "{err}");

    let (ok, err) = zoo_train(&[("WORLD_SIZE", "two")], &[]);
    assert!(
        !ok && err.contains("WORLD_SIZE=\"two\": expected a whole number"),
        "{err}"
    );

    if !cfg!(feature = "mpi") {
        let mpirun = [("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")];
        let (ok, err) = zoo_train(&mpirun, &[]);
        assert!(!ok && err.contains("without the `mpi` feature"), "{err}");
        let (ok, err) = zoo_train(&[], &["--nproc-per-node", "2"]);
        assert!(!ok && err.contains("without the `mpi` feature"), "{err}");
    }
    let (ok, err) = zoo_train(&[], &["--nproc-per-node", "0"]);
    assert!(
        !ok && err.contains("--nproc-per-node 0: expected at least one process"),
        "{err}"
    );
}

#[test]
fn a_data_parallel_matrix_is_reported_by_rank_0_alone() {
    use std::sync::Arc;
    use zoo_core::distributed::Collective;
    use zoo_core::distributed::local::ThreadGroup;

    let dir = zoo_core::testing::scratch_dir("dp-matrix");
    let matrix = dir.join("pair.toml");
    std::fs::write(
        &matrix,
        "name = \"pair\"\n[defaults]\nepochs = 1\nbatch_size = 8\ntrain_per_class = 2\n\
         valid_per_class = 1\n[[run]]\nmodel = \"densenet\"\ninput_size = 32\n",
    )
    .unwrap();
    let (runs, samples) = (dir.join("runs"), repo_samples());
    let reports: Vec<Option<std::path::PathBuf>> = std::thread::scope(|scope| {
        let ranks: Vec<_> = ThreadGroup::new(2)
            .unwrap()
            .into_iter()
            .map(|handle| {
                let (matrix, runs, samples) = (&matrix, &runs, &samples);
                scope.spawn(move || {
                    let collective: Arc<dyn Collective> = Arc::new(handle);
                    let placement = zoo_cli::training::Placement::joined(
                        Some(collective),
                        None,
                        0,
                        candle_core::Device::Cpu,
                    );
                    zoo_cli::matrix::train_all(
                        matrix,
                        runs,
                        &samples.join("no-data"),
                        samples,
                        "cpu",
                        None,
                        &placement,
                    )
                    .unwrap()
                })
            })
            .collect();
        ranks.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(reports[1].is_none(), "rank 1 reported {:?}", reports[1]);
    let report = reports[0].as_ref().expect("rank 0 reports");
    let text = std::fs::read_to_string(report).unwrap();
    let rows = text
        .lines()
        .filter(|l| l.starts_with("| `densenet`"))
        .count();
    assert_eq!(rows, 1, "{text}");
}

/// The committed data sample.
fn repo_samples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples")
}
