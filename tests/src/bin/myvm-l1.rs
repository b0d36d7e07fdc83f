//! `myvm-l1 SCRIPT...`: boots the L1 VM of the nested-KVM tier (build it with `make l1`), runs
//! each SCRIPT there with `sh` in turn (their output streams to stderr as `l1| ` lines, and is
//! printed on stdout when the script ends), and exits with the first non-zero exit code. For
//! running one L1 test by hand and for `make bench`'s L1 section. `MYVM_L1_TIMEOUT` (seconds,
//! default 900) bounds each script.

use std::time::Duration;

fn main() {
    let scripts: Vec<String> = std::env::args().skip(1).collect();
    if scripts.is_empty() {
        eprintln!("usage: myvm-l1 SCRIPT... (e.g. myvm-l1 'sh /opt/myvm-tests/node.sh auto')");
        std::process::exit(2);
    }
    let timeout = std::env::var("MYVM_L1_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    let mut l1 = myvm_tests::l1::L1::boot();
    for script in scripts {
        let job = l1.run(&script, Duration::from_secs(timeout));
        print!("{}", job.output);
        if job.code != 0 {
            eprintln!("myvm-l1: {script:?} exited {}", job.code);
            drop(l1);
            std::process::exit(job.code);
        }
    }
}
