//! The `ironcage-mock-provider` process: its one stdout line, the address file
//! and a clean exit on SIGTERM and SIGINT.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn spawn(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ironcage-mock-provider"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the mock");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the first line");
    (child, line)
}

fn get(url: &str, path: &str) -> String {
    let host = url.strip_prefix("http://").expect("http url");
    let mut stream = TcpStream::connect(host).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

fn stop(mut child: Child, signal: Signal) {
    let pid = i32::try_from(child.id()).expect("pid fits");
    kill(Pid::from_raw(pid), signal).expect("signal the mock");
    let status = child.wait().expect("wait for the mock");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn prints_its_address_writes_the_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr_file = dir.path().join("addr");
    let addr_arg = addr_file.to_str().expect("utf-8 path");
    let (child, line) = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--addr-file",
        addr_arg,
        "--openai-key",
        "sk-a",
        "--record",
    ]);
    let url = line
        .trim_end()
        .strip_prefix("listening on ")
        .expect("the listening line")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"));
    let written = std::fs::read_to_string(&addr_file).expect("address file");
    assert_eq!(written, url);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "addr")
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary file left: {leftovers:?}"
    );

    let stats = get(&url, "/_mock/stats");
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
    assert!(stats.contains("\"total\":0"), "{stats}");
    let recorded = get(&url, "/_mock/requests");
    assert!(
        recorded.starts_with("HTTP/1.1 200"),
        "--record is on: {recorded}"
    );
    stop(child, Signal::SIGTERM);
}

#[test]
fn stops_on_sigint() {
    let (child, line) = spawn(&[]);
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    stop(child, Signal::SIGINT);
}
