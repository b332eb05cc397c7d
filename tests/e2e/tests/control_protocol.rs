//! The control socket at the protocol level (bad frames, oversized headers, lying
//! lengths, version mismatch, Hello first) and its access control by peer
//! credentials.

// Helpers here run only inside tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use ironcage_e2e::*;
use ironcage_shared::protocol::*;
use std::net::Shutdown;

fn daemon() -> Daemon {
    let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    d.start();
    d.wait_running("a");
    d
}

/// A second client, connected and greeted before the trouble starts.
fn bystander(d: &Daemon) -> RawClient {
    let mut c = RawClient::connect(&d.socket);
    match c.hello() {
        Response::Hello(h) => {
            assert_eq!(h.protocol_version, PROTOCOL_VERSION);
            assert_eq!(h.role, Role::Admin);
        }
        other => panic!("hello: {other:?}"),
    }
    c
}

fn assert_serves(d: &Daemon, c: &mut RawClient) {
    c.send(&Request::Ping);
    assert_eq!(
        c.recv(),
        Some(Response::Pong),
        "the other client was affected"
    );
    c.send(&Request::ListAgents);
    match c.recv() {
        Some(Response::Agents(a)) => assert_eq!(a.len(), 1),
        other => panic!("list: {other:?}"),
    }
    // And new connections still work.
    d.ctl_ok(&["daemon", "ping"]);
    assert!(pid_alive(d.pid() as i32));
}

/// The reply to a bad frame: an error of `code`, then the connection closes; or
/// just the close.
fn expect_error_or_close(c: &mut RawClient, code: ErrorCode) {
    match c.recv() {
        None => {}
        Some(Response::Error(e)) => {
            assert_eq!(e.code, code, "{e:?}");
            assert!(!e.message.is_empty());
            assert_eq!(
                c.recv(),
                None,
                "the connection must close after a bad frame"
            );
        }
        Some(other) => panic!("expected an error or a close, got {other:?}"),
    }
}

#[test]
fn garbage_payload_closes_only_that_connection() {
    let d = daemon();
    let mut other = bystander(&d);
    // Before Hello.
    let mut bad = RawClient::connect(&d.socket);
    bad.send_raw(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    expect_error_or_close(&mut bad, ErrorCode::Malformed);
    assert_serves(&d, &mut other);
    // After Hello.
    let mut bad = bystander(&d);
    bad.send_raw(&[0, 0, 0, 5, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa]);
    expect_error_or_close(&mut bad, ErrorCode::Malformed);
    assert_serves(&d, &mut other);
}

#[test]
fn huge_length_header_closes_only_that_connection() {
    let d = daemon();
    let mut other = bystander(&d);
    let mut bad = RawClient::connect(&d.socket);
    bad.send_raw(&[0xff, 0xff, 0xff, 0xff]);
    expect_error_or_close(&mut bad, ErrorCode::Malformed);
    assert_serves(&d, &mut other);
    // Just over the 1 MiB maximum, after Hello.
    let mut bad = bystander(&d);
    bad.send_raw(&((1u32 << 20) + 1).to_be_bytes());
    expect_error_or_close(&mut bad, ErrorCode::Malformed);
    assert_serves(&d, &mut other);
}

#[test]
fn lying_length_then_half_close() {
    let d = daemon();
    let mut other = bystander(&d);
    let mut bad = bystander(&d);
    bad.send_raw(&[0, 0, 0, 100]);
    bad.send_raw(&[1; 10]);
    bad.stream.shutdown(Shutdown::Write).unwrap();
    // The daemon gives up on that frame and closes; nothing else is disturbed.
    assert_eq!(bad.recv(), None);
    assert_serves(&d, &mut other);
    // A truncated header too.
    let mut bad = RawClient::connect(&d.socket);
    bad.send_raw(&[0, 0]);
    bad.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(bad.recv(), None);
    assert_serves(&d, &mut other);
}

#[test]
fn idle_and_abandoned_connections_do_not_block_others() {
    let d = daemon();
    // Connected, silent; a frame started but never finished; dropped mid-frame.
    let _silent = RawClient::connect(&d.socket);
    let mut stuck = RawClient::connect(&d.socket);
    stuck.send_raw(&[0, 0, 0, 50, 1, 2, 3]);
    {
        let mut dropped = bystander(&d);
        dropped.send_raw(&[0, 0, 1, 0, 1]);
    }
    let mut other = bystander(&d);
    assert_serves(&d, &mut other);
}

#[test]
fn protocol_version_mismatch_is_a_clear_error() {
    let d = daemon();
    let mut other = bystander(&d);
    let mut c = RawClient::connect(&d.socket);
    c.send(&Request::Hello(HelloRequest {
        protocol_version: 999,
        client: "future-ctl 9.9".into(),
    }));
    match c.recv() {
        Some(Response::Error(e)) => {
            assert_eq!(e.code, ErrorCode::VersionMismatch, "{e:?}");
            assert!(
                e.message.contains("999"),
                "names the client's version: {}",
                e.message
            );
            assert!(
                e.message.contains(&format!("v{PROTOCOL_VERSION}")),
                "names the daemon's version: {}",
                e.message
            );
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    assert_eq!(c.recv(), None, "the connection closes after a mismatch");
    assert_serves(&d, &mut other);
}

#[test]
fn request_before_hello_is_refused() {
    let d = daemon();
    let mut c = RawClient::connect(&d.socket);
    c.send(&Request::ListAgents);
    match c.recv() {
        Some(Response::Error(e)) => {
            assert_eq!(e.code, ErrorCode::HelloRequired, "{e:?}");
            assert!(e.message.to_lowercase().contains("hello"), "{}", e.message);
        }
        other => panic!("expected HelloRequired, got {other:?}"),
    }
    assert_eq!(c.recv(), None);
    // A second Hello on a greeted connection is an error but keeps the connection.
    let mut c = bystander(&d);
    c.send(&Request::Hello(HelloRequest {
        protocol_version: PROTOCOL_VERSION,
        client: "e2e".into(),
    }));
    assert!(matches!(c.recv(), Some(Response::Error(_))));
    c.send(&Request::Ping);
    assert_eq!(c.recv(), Some(Response::Pong));
}

#[test]
fn back_to_back_requests_in_one_write() {
    let d = daemon();
    let mut c = bystander(&d);
    let mut bytes = ironcage_shared::framing::encode(&Request::Ping).unwrap();
    bytes.extend(ironcage_shared::framing::encode(&Request::ListAgents).unwrap());
    bytes.extend(ironcage_shared::framing::encode(&Request::Ping).unwrap());
    c.send_raw(&bytes);
    assert_eq!(c.recv(), Some(Response::Pong));
    assert!(matches!(c.recv(), Some(Response::Agents(_))));
    assert_eq!(c.recv(), Some(Response::Pong));
}

const NOBODY: u32 = 65534;
/// A uid in no access list, and in no group that is (it runs with gid 65534 so
/// the socket's mode lets it connect at all).
const STRANGER: u32 = 65533;

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    println!("SKIP {test}: needs root to run ironctl as other uids (CI runs as root)");
    true
}

#[test]
fn viewer_can_read_but_not_mutate() {
    if skip_unless_root("viewer_can_read_but_not_mutate") {
        return;
    }
    let cfg = format!(
        "[daemon]\nsocket_group = \"nogroup\"\n\n[access]\nviewers = [\"uid:{NOBODY}\"]\n{}",
        sh_agent("a", "echo visible-line; exec sleep 1000", "")
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    let pid = d.wait_running("a");
    d.wait_log("a", "visible-line");
    // The socket belongs to the configured group, mode 0660.
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::gid(&meta),
        NOBODY,
        "socket group"
    );

    // Reads work.
    for args in [
        &["agents", "list"][..],
        &["--json", "agents", "list"],
        &["agents", "status", "a"],
        &["agents", "logs", "a"],
        &["daemon", "status"],
        &["daemon", "ping"],
    ] {
        let out = d.ctl_as(NOBODY, NOBODY, args);
        assert!(out.status.success(), "viewer {args:?}: {out:?}");
    }
    let out = d.ctl_as(NOBODY, NOBODY, &["--json", "agents", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["pid"].as_i64(), Some(i64::from(pid)));
    let out = d.ctl_as(NOBODY, NOBODY, &["agents", "logs", "a"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("visible-line"));

    // Mutations are refused, naming the uid and the missing role.
    for args in [
        &["agents", "kill", "a"][..],
        &["agents", "stop", "a"],
        &["agents", "restart", "a"],
        &["agents", "start", "a"],
        &["daemon", "reload"],
    ] {
        let out = d.ctl_as(NOBODY, NOBODY, args);
        assert_eq!(out.status.code(), Some(1), "viewer {args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&NOBODY.to_string()), "names the uid: {err}");
        assert!(err.contains("admin"), "names the role it lacks: {err}");
    }
    // Nothing happened to the agent.
    assert_eq!(d.wait_running("a"), pid);
    // Root is still admin.
    d.ctl_ok(&["agents", "restart", "a"]);
    assert_ne!(d.wait_running("a"), pid);
}

#[test]
fn unlisted_uid_is_refused() {
    if skip_unless_root("unlisted_uid_is_refused") {
        return;
    }
    let cfg = format!(
        "[daemon]\nsocket_group = \"nogroup\"\n\n[access]\nviewers = [\"uid:{NOBODY}\"]\n{}",
        sh_agent("a", "exec sleep 1000", "")
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    d.wait_running("a");
    for args in [
        &["agents", "list"][..],
        &["daemon", "ping"],
        &["agents", "kill", "a"],
    ] {
        let out = d.ctl_as(STRANGER, NOBODY, args);
        assert_eq!(out.status.code(), Some(1), "stranger {args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("uid {STRANGER}")),
            "names its uid: {err}"
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    // A group grant works for it: reload with the group as viewer.
    d.write_config(&cfg.replace(
        &format!("viewers = [\"uid:{NOBODY}\"]"),
        "viewers = [\"group:nogroup\"]",
    ));
    d.ctl_ok(&["daemon", "reload"]);
    let out = d.ctl_as(STRANGER, NOBODY, &["agents", "list"]);
    assert!(out.status.success(), "a group viewer may list: {out:?}");
}

#[test]
fn admin_by_config() {
    if skip_unless_root("admin_by_config") {
        return;
    }
    let cfg = format!(
        "[daemon]\nsocket_group = \"nogroup\"\n\n[access]\nadmins = [\"uid:{NOBODY}\"]\n{}",
        sh_agent("a", "exec sleep 1000", "")
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    let pid = d.wait_running("a");
    let out = d.ctl_as(NOBODY, NOBODY, &["agents", "restart", "a"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(d.wait_running("a"), pid);
}

#[test]
fn socket_mode_keeps_others_out() {
    if skip_unless_root("socket_mode_keeps_others_out") {
        return;
    }
    // No socket_group: the socket is root's, 0660; uid/gid 65533 cannot connect.
    let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    d.start();
    let out = d.ctl_as(STRANGER, STRANGER, &["agents", "list"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&d.socket.display().to_string()) && err.to_lowercase().contains("permission"),
        "{err}"
    );
}
