//! Tracing the host from a toolbox (`TOOLBOX_TRACING`, on by default): bpftrace, perf,
//! bcc's tools, tcpdump, gdb and strace from Debian's packages, each against a host
//! process the test starts; the host's kernel directories inside; the same in a super
//! privileged container; and `TOOLBOX_TRACING=0` giving back systemd-nspawn's filter.
//! The host has tracefs, debugfs and the bpf filesystem mounted as systemd mounts them
//! (`scripts/setup-host` mounts them where missing).

use std::net::UdpSocket;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;

const TRACING_IMAGE: &str = "toolbox-tracing:bookworm";
/// A test environment for the tracing image, with overlay storage (a new toolbox in a
/// fraction of a second whatever the image's size).
fn tracing_env(name: &str) -> Option<TestEnv> {
    let t = TestEnv::new(name, TRACING_IMAGE)?;
    for (fs, at) in [
        ("tracefs", "/sys/kernel/tracing"),
        ("debugfs", "/sys/kernel/debug"),
        ("bpf", "/sys/fs/bpf"),
    ] {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            toolbox::host::kernel::mounted(&mountinfo, fs, at),
            "the host has no {fs} at {at}: run scripts/setup-host, which mounts it as systemd does"
        );
    }
    Some(t)
}

/// `uname -r`.
fn kernel_release() -> String {
    String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// toolbox with overlay storage: a new toolbox in a fraction of a second.
fn run(t: &TestEnv, args: &[&str]) -> Output {
    overlay_command(t).args(args).output().unwrap()
}

#[test]
fn bpftrace_runs_and_a_syscall_tracepoint_fires_for_a_host_process() {
    let Some(t) = tracing_env("tracing_bpftrace") else {
        return;
    };
    let out = run(
        &t,
        &[
            "bpftrace",
            "-e",
            r#"BEGIN { printf("begin ok\n"); exit(); }"#,
        ],
    );
    assert!(succeeded(&out).contains("begin ok"), "{}", describe(&out));
    let tracee = Tracee::start();
    let program = format!(
        r#"tracepoint:syscalls:sys_enter_write /pid == {}/ {{ printf("hit %d %s\n", pid, comm); exit(); }}"#,
        tracee.pid()
    );
    let out = run(&t, &["timeout", "30", "bpftrace", "-e", &program]);
    assert!(
        succeeded(&out).contains(&format!("hit {} {TRACEE}", tracee.pid())),
        "{}",
        describe(&out)
    );
}

#[test]
fn perf_counts_a_host_process_and_samples_the_whole_host() {
    let Some(t) = tracing_env("tracing_perf") else {
        return;
    };
    let tracee = Tracee::start();
    let pid = tracee.pid().to_string();
    let out = run(
        &t,
        &[
            "perf",
            "stat",
            "-e",
            "task-clock",
            "-p",
            &pid,
            "--",
            "sleep",
            "0.5",
        ],
    );
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains(&format!("process id '{pid}'")) && report.contains("task-clock"),
        "{}",
        describe(&out)
    );
    let out = run(
        &t,
        &[
            "sh",
            "-c",
            "perf record -q -a -o /tmp/perf.data -- sleep 1 && \
             perf report -i /tmp/perf.data --stdio --sort comm 2>/dev/null",
        ],
    );
    let report = succeeded(&out);
    assert!(
        report.contains("# Samples:") && report.contains(TRACEE),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_bcc_tool_compiles_against_the_hosts_headers_and_starts() {
    let Some(t) = tracing_env("tracing_bcc") else {
        return;
    };
    let release = kernel_release();
    let out = run(&t, &["syscount-bpfcc", "-d", "1"]);
    assert!(
        succeeded(&out).contains("Tracing syscalls"),
        "{}",
        describe(&out)
    );
    // The headers it found are the host's, read-only where the host keeps them.
    let build = format!("/lib/modules/{release}/build");
    let out = run(
        &t,
        &[
            "sh",
            "-c",
            &format!("readlink -f {build} && touch {build}/toolbox-probe"),
        ],
    );
    assert_ne!(status(&out), 0, "{}", describe(&out));
    let host_headers = std::fs::canonicalize(&build).unwrap();
    assert_eq!(stdout(&out).trim(), host_headers.display().to_string());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"));
}

#[test]
fn tcpdump_captures_gdb_and_strace_attach() {
    let Some(t) = tracing_env("tracing_classics") else {
        return;
    };
    let tracee = Tracee::start();
    let pid = tracee.pid().to_string();
    // Packets to a port nobody listens on, until the capture has one.
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let sending = sending.clone();
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            while sending.load(Ordering::Relaxed) {
                let _ = socket.send_to(b"toolbox", "127.0.0.1:9");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let out = run(
        &t,
        &[
            "timeout", "30", "tcpdump", "-i", "lo", "-n", "-c", "1", "udp", "port", "9",
        ],
    );
    sending.store(false, Ordering::Relaxed);
    sender.join().unwrap();
    assert!(
        succeeded(&out).contains("127.0.0.1.9: UDP"),
        "{}",
        describe(&out)
    );
    assert_gdb_and_strace_attach(&|args| run(&t, args), &pid);
}

#[test]
fn the_kernels_own_limits_pass_through_unchanged() {
    let Some(t) = tracing_env("tracing_kprobe") else {
        return;
    };
    succeeded(&run(&t, &["true"]));
    let out = run(
        &t,
        &[
            "timeout",
            "30",
            "bpftrace",
            "-e",
            "kprobe:do_nanosleep { exit(); }",
        ],
    );
    if std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists() {
        assert_eq!(status(&out), 0, "{}", describe(&out));
        return;
    }
    // This kernel has no kprobe events: bpftrace says so itself, and toolbox adds nothing.
    assert_ne!(status(&out), 0, "{}", describe(&out));
    assert!(toolbox_lines(&out).is_empty(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kprobe"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_images_own_kernel_files_stay_and_the_hosts_fill_in() {
    let Some(t) = tracing_env("tracing_kernel_dirs") else {
        return;
    };
    let release = kernel_release();
    let host_modules = std::fs::canonicalize(format!("/lib/modules/{release}")).unwrap();
    let before = listing(&host_modules);
    let tag = Tag(format!("toolbox-test-kernel-dirs-{}:v", std::process::id()));
    build_image(
        &tag.0,
        &format!(
            "FROM {TRACING_IMAGE}\nRUN mkdir -p /lib/modules/{release}/extra \
             && echo image > /lib/modules/{release}/extra/own \
             && echo image > /lib/modules/{release}/build\n"
        ),
    );
    let out = overlay_command(&t)
        .env("TOOLBOX_DOCKER_IMAGE", &tag.0)
        .args([
            "sh",
            "-c",
            &format!(
                "cat /lib/modules/{release}/extra/own /lib/modules/{release}/build; \
                 readlink /lib/modules/{release}/source"
            ),
        ])
        .output()
        .unwrap();
    let host_source = read_link(host_modules.join("source"));
    assert_eq!(
        succeeded(&out),
        format!("image\nimage\n{host_source}\n"),
        "{}",
        describe(&out)
    );
    assert_eq!(listing(&host_modules), before);
}

#[test]
fn dry_run_and_config_show_tracing_and_zero_turns_it_off() {
    let Some(t) = tracing_env("tracing_off") else {
        return;
    };
    let out = run(&t, &["--dry-run"]);
    let command = succeeded(&out);
    for option in [
        "--system-call-filter=bpf",
        "--system-call-filter=perf_event_open",
        "--bind=/sys/kernel/tracing",
        "--bind=/sys/kernel/debug",
        "--bind=/sys/fs/bpf",
    ] {
        assert!(command.contains(option), "{option} missing: {command}");
    }
    let out = run(&t, &["config"]);
    assert!(
        succeeded(&out)
            .lines()
            .any(|l| l.contains("TOOLBOX_TRACING=1") && l.contains("default")),
        "{}",
        describe(&out)
    );
    let off = |args: &[&str]| {
        overlay_command(&t)
            .env("TOOLBOX_TRACING", "0")
            .args(args)
            .output()
            .unwrap()
    };
    let command = succeeded(&off(&["--dry-run"]));
    assert!(
        !command.contains("--system-call-filter") && !command.contains("/sys/kernel"),
        "{command}"
    );
    let out = off(&[
        "bpftrace",
        "-e",
        r#"BEGIN { printf("begin ok\n"); exit(); }"#,
    ]);
    assert_ne!(status(&out), 0, "{}", describe(&out));
    // Refused at bpf() (systemd-nspawn 252, the test machine) or, where the maps can be
    // made (systemd-nspawn 257 on Linux 6.12, the testbed), at perf_event_open, which
    // bpftrace needs for its output.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Creation of the required BPF maps has failed")
            || stderr.contains("perf_event_open: Operation not permitted"),
        "{}",
        describe(&out)
    );
    let out = off(&["ls", "/sys/kernel/tracing"]);
    assert_eq!(succeeded(&out), "", "{}", describe(&out));
    // And back on for the same toolbox.
    let out = run(
        &t,
        &[
            "bpftrace",
            "-e",
            r#"BEGIN { printf("begin ok\n"); exit(); }"#,
        ],
    );
    assert!(succeeded(&out).contains("begin ok"), "{}", describe(&out));
    // The toolbox exists now, its overlay unmounted: the dry run places the host's
    // modules where a session does, through the image's `/lib -> usr/lib`.
    let command = succeeded(&run(&t, &["--dry-run"]));
    let modules = format!(":/usr/lib/modules/{} ", kernel_release());
    assert!(command.contains(&modules), "no {modules} in {command}");
}

#[test]
fn a_super_privileged_container_traces_the_same() {
    let Some(t) = tracing_env("tracing_spc") else {
        return;
    };
    let spc = |tracing: &str, args: &[&str]| {
        t.command()
            .env("TOOLBOX_RUNTIME", "spc")
            .env("TOOLBOX_TRACING", tracing)
            .arg("--rm")
            .args(args)
            .output()
            .unwrap()
    };
    let tracee = Tracee::start();
    let program = format!(
        r#"tracepoint:syscalls:sys_enter_write /pid == {}/ {{ printf("hit %d\n", pid); exit(); }}"#,
        tracee.pid()
    );
    let out = spc("1", &["timeout", "30", "bpftrace", "-e", &program]);
    assert!(
        succeeded(&out).contains(&format!("hit {}", tracee.pid())),
        "{}",
        describe(&out)
    );
    let out = spc(
        "1",
        &["sh", "-c", "ls /sys/kernel/tracing/events | grep -c ."],
    );
    assert!(succeeded(&out).trim().parse::<u32>().unwrap() > 0);
    let out = spc("0", &["ls", "/sys/kernel/tracing"]);
    assert_eq!(succeeded(&out), "", "{}", describe(&out));
}
