//! A workload for checkpoint/restore tests and benches: a counter loop whose progress and
//! memory can be checked from outside.
//!
//! Writes into `--dir`:
//! * `counter` — the loop count, rewritten in place (fixed width) through one fd kept open;
//! * `child-<i>` — the same for each forked child (`--children`);
//! * `pipe` — bytes received so far from a child writing into a pipe (`--pipe`);
//! * `port` — the port of the TCP listener on 127.0.0.1 (`--listen <port>`, 0 for any);
//! * `ready` — created once memory is allocated and every child is running;
//! * `verify-result` — `ok <MiB>` or `bad <page>` after `verify-request` appears: the
//!   `--mem` MiB of memory are checked against the deterministic pattern they were filled with.
//!
//! With `--unix-listen <path>` the root also holds a listening unix stream socket bound there,
//! and with `--secret-file <path>` it reads that file into its heap after forking (so only
//! the root's memory holds the contents) and keeps it there: the inspection tests look for it.
//!
//! Single-threaded on purpose, so `fork` is safe.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

struct Args {
    dir: PathBuf,
    children: usize,
    pipe: bool,
    mem_mib: usize,
    interval: Duration,
    listen: Option<u16>,
    unix_listen: Option<PathBuf>,
    secret_file: Option<PathBuf>,
}

fn parse() -> Args {
    let mut a = Args {
        dir: PathBuf::from("."),
        children: 0,
        pipe: false,
        mem_mib: 0,
        interval: Duration::from_millis(20),
        listen: None,
        unix_listen: None,
        secret_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(val()),
            "--children" => a.children = val().parse().expect("--children N"),
            "--pipe" => a.pipe = true,
            "--mem" => a.mem_mib = val().parse().expect("--mem MIB"),
            "--interval-ms" => {
                a.interval = Duration::from_millis(val().parse().expect("--interval-ms N"))
            }
            "--listen" => a.listen = Some(val().parse().expect("--listen PORT")),
            "--unix-listen" => a.unix_listen = Some(PathBuf::from(val())),
            "--secret-file" => a.secret_file = Some(PathBuf::from(val())),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The fixed, incompressible pattern of the page `index`: xorshift64 seeded by the index.
pub fn fill_page(index: usize, page: &mut [u8]) {
    let mut x = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in page.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

fn counter_file(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("open counter file")
}

fn write_count(f: &File, n: u64) {
    // Fixed width, rewritten at offset 0: the file never changes size, so CRIU's check of
    // open regular files' sizes on restore holds.
    let s = format!("{n:>20}\n");
    let _ = f.write_at(s.as_bytes(), 0);
}

fn count_loop(path: &Path, interval: Duration) -> ! {
    let f = counter_file(path);
    let mut n = 0u64;
    loop {
        n += 1;
        write_count(&f, n);
        sleep(interval);
    }
}

fn main() {
    let a = parse();
    fs::create_dir_all(&a.dir).expect("create --dir");

    const PAGE: usize = 4096;
    let mut mem = vec![0u8; a.mem_mib << 20];
    for (i, page) in mem.chunks_exact_mut(PAGE).enumerate() {
        fill_page(i, page);
    }

    for i in 0..a.children {
        let path = a.dir.join(format!("child-{i}"));
        // SAFETY: single-threaded process; the child only runs the counter loop.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => count_loop(&path, a.interval),
            nix::unistd::ForkResult::Parent { .. } => {}
        }
    }

    let pipe_rx = if a.pipe {
        let (rx, tx) = nix::unistd::pipe().expect("pipe");
        // SAFETY: single-threaded process; the child only writes into the pipe.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                drop(rx);
                let tx = File::from(tx);
                loop {
                    let _ = std::io::Write::write_all(&mut &tx, b"x");
                    sleep(a.interval);
                }
            }
            nix::unistd::ForkResult::Parent { .. } => {
                drop(tx);
                nix::fcntl::fcntl(
                    &rx,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )
                .expect("nonblock");
                Some(File::from(rx))
            }
        }
    } else {
        None
    };

    let counter = counter_file(&a.dir.join("counter"));
    let pipe_count = pipe_rx.as_ref().map(|_| counter_file(&a.dir.join("pipe")));
    let listener = a.listen.map(|port| {
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind --listen");
        let port = l.local_addr().expect("local_addr").port();
        fs::write(a.dir.join("port"), port.to_string()).expect("write port");
        l
    });
    let unix_listener = a
        .unix_listen
        .as_ref()
        .map(|p| std::os::unix::net::UnixListener::bind(p).expect("bind --unix-listen"));
    let secret = a
        .secret_file
        .as_ref()
        .map(|p| fs::read(p).expect("read --secret-file"));
    fs::write(a.dir.join("ready"), std::process::id().to_string()).expect("write ready");

    let request = a.dir.join("verify-request");
    let mut n = 0u64;
    let mut piped = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        n += 1;
        write_count(&counter, n);
        if let (Some(rx), Some(out)) = (&pipe_rx, &pipe_count) {
            while let Ok(k) = std::io::Read::read(&mut &*rx, &mut buf) {
                if k == 0 {
                    break;
                }
                piped += k as u64;
            }
            write_count(out, piped);
        }
        if request.exists() {
            let mut expect = vec![0u8; PAGE];
            let verdict = mem
                .chunks_exact(PAGE)
                .enumerate()
                .find(|(i, page)| {
                    fill_page(*i, &mut expect);
                    *page != expect.as_slice()
                })
                .map_or_else(|| format!("ok {}", a.mem_mib), |(i, _)| format!("bad {i}"));
            let _ = fs::remove_file(&request);
            let _ = fs::write(a.dir.join("verify-result"), verdict);
        }
        // Keep the sockets and the secret alive (and the secret in memory) for the whole run.
        std::hint::black_box((&listener, &unix_listener, &secret));
        sleep(a.interval);
    }
}
