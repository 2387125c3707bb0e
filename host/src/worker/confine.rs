//! What the worker may do once its runtime is loaded: nothing but compute.
//!
//! Two locks, both applied to every thread of the worker:
//!
//! * resource limits: address space capped ([`MEMORY_BYTES`]), no files
//!   written, no core dumps;
//! * a seccomp filter refusing (with `EPERM`) every system call that
//!   opens, creates, changes, renames or removes files (io_uring included),
//!   starts programs or processes, reaches a network, signals or inspects
//!   other processes (pidfds included), or touches the kernel's
//!   configuration. Reading and writing the pipes it already holds, memory
//!   management and threads stay allowed.
//!
//! The filter is a deny-list, not an allow-list: ONNX Runtime's own system
//! calls vary by version and CPU, and an allow-list that misses one kills
//! every inference. What is denied is what an escape needs.

use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::BTreeMap;

/// Address space the worker may map: ONNX Runtime, the sessions and one
/// run's tensors (each at most 256 MiB, see the model rules).
pub const MEMORY_BYTES: u64 = 8 << 30;

/// System calls the worker is refused.
const DENIED: &[libc::c_long] = &[
    // Files.
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_fchmodat,
    libc::SYS_fchownat,
    libc::SYS_truncate,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_chdir,
    libc::SYS_chroot,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_memfd_create,
    libc::SYS_fchmodat2,
    libc::SYS_utimensat,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    // io_uring performs all of the above without the system calls.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // Programs and processes.
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_kill,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_getfd,
    libc::SYS_pidfd_send_signal,
    libc::SYS_process_madvise,
    libc::SYS_userfaultfd,
    libc::SYS_setpriority,
    libc::SYS_sched_setaffinity,
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_msgget,
    libc::SYS_mq_open,
    // Networks.
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    // The kernel.
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_kexec_load,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_setrlimit,
    libc::SYS_prlimit64,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_creat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_link,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_symlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mknod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chmod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lchown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_fork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_vfork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_accept,
];

/// Applies the limits and the filter to the calling process. Fails if the
/// kernel refuses either: a worker that cannot be confined does not run.
pub(crate) fn confine() -> Result<(), String> {
    let limit = |resource, value: u64, what: &str| {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct it is given and nothing else.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(format!(
                "cannot limit {what}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    };
    // A write past the file-size limit fails with EFBIG instead of killing.
    // SAFETY: setting a signal to be ignored installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    limit(libc::RLIMIT_AS, MEMORY_BYTES, "the address space")?;
    limit(libc::RLIMIT_FSIZE, 0, "file sizes")?;
    limit(libc::RLIMIT_CORE, 0, "core dumps")?;

    let pid = u64::from(std::process::id());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &call in DENIED {
        rules.insert(call, vec![]);
        // The same calls by their x32 numbers, on kernels with that ABI.
        #[cfg(target_arch = "x86_64")]
        rules.insert(call | X32_BIT, vec![]);
    }
    // Signals to anyone but itself (abort raises one on itself).
    for call in [
        libc::SYS_tgkill,
        libc::SYS_tkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        rules.insert(call, vec![rule(0, SeccompCmpOp::Ne, pid)?]);
    }
    // New processes (threads share the process and stay allowed).
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(0, SeccompCmpOp::MaskedEq(thread), 0)?],
    );
    install(rules, libc::EPERM)?;
    // clone3 hides its flags in memory the filter cannot read: refused as
    // absent, so the C library falls back to clone.
    install(BTreeMap::from([(libc::SYS_clone3, vec![])]), libc::ENOSYS)
}

/// The bit x86-64 kernels set in the numbers of x32 system calls.
#[cfg(target_arch = "x86_64")]
const X32_BIT: libc::c_long = 0x4000_0000;

/// A rule matching when argument `arg` compares to `value` by `op`.
fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| format!("cannot build a seccomp rule: {e}"))
}

/// Installs a filter on every thread answering `errno` to the calls `rules`
/// match, and letting everything else through.
fn install(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<(), String> {
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp support for this architecture: {e}"))?;
    let filter = seccompiler::SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(|e| format!("cannot build the seccomp filter: {e}"))?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e| format!("cannot compile the seccomp filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| format!("the kernel refused the seccomp filter: {e}"))
}
