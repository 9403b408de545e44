//! Facts about the machine a task runs on, for benchmarks and reports: the CPU model, the
//! threads and instruction set in use, peak memory.

/// The value after the colon of the first line of `file` that starts with `key` (the
/// `key: value` lines of /proc/cpuinfo and /proc/self/status), trimmed.
fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into())
}

/// The CPU's family and model numbers and its vector extensions, from /proc/cpuinfo: virtual
/// machines report one model name ("AMD EPYC") for CPUs as different as Zen 3 (AVX2) and Zen 4
/// (AVX-512), so a figure names these too.
pub fn cpu_kind() -> String {
    let field = |key: &str| proc_field("/proc/cpuinfo", key).unwrap_or_else(|| "?".into());
    let flags = field("flags");
    let vector: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| {
            matches!(
                *f,
                "avx2" | "fma" | "avx512f" | "avx512_bf16" | "amx_tile" | "avx512_vnni"
            )
        })
        .collect();
    format!(
        "family {} model {}, {}",
        field("cpu family"),
        field("model\t"),
        if vector.is_empty() {
            "no AVX2".to_string()
        } else {
            vector.join(" ")
        }
    )
}

/// Where a benchmark runs: the CPU, its threads and the tile kernels' instruction set.
pub fn print_machine() {
    println!(
        "machine: {} ({}), {} threads (RAYON_NUM_THREADS), tile kernels {} (ZOO_CPU_ISA \
         overrides)",
        cpu_model(),
        cpu_kind(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into()),
        zoo_kernels::microkernel::active_isa().name()
    );
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    proc_field("/proc/self/status", "VmHWM")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
