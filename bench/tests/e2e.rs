//! `gateway-bench` against the mock provider, end to end.

use ironcage_mock_provider::{MockServer, Options};
use serde_json::Value;
use tokio::process::Command;

async fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway-bench"))
        .args(args)
        .output()
        .await
        .expect("run gateway-bench");
    assert!(
        output.status.success(),
        "gateway-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(
        stdout.lines().count(),
        1,
        "--json prints one line: {stdout}"
    );
    serde_json::from_str(&stdout).expect("one JSON object")
}

fn common_args(url: &str) -> Vec<String> {
    [
        "--target",
        url,
        "--api-key",
        "sk-good",
        "--rate",
        "200",
        "--duration-secs",
        "0.5",
        "--warmup-secs",
        "0.1",
        "--connections",
        "4",
        "--prompt-bytes",
        "512",
        "--json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_target_direct_reports_overhead() {
    let mock = MockServer::start(Options {
        openai_keys: vec!["sk-good".to_owned()],
        record: true,
        ..Options::default()
    })
    .await
    .expect("start mock");
    let url = mock.url();
    let mut args = common_args(&url);
    args.extend(["--direct".to_owned(), format!("{url}/v1")]);
    args.extend(["--header".to_owned(), "x-bench-tag: e2e".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = bench(&args).await;

    let phases = report["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["direct #1", "target", "direct #2"]);
    for phase in phases {
        assert_eq!(phase["scheduled"], 100, "{phase}");
        assert_eq!(phase["ok"], 100, "{phase}");
        assert_eq!(phase["errors"], serde_json::json!({}));
        assert!(phase["latency_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0));
    }
    assert_eq!(report["direct"]["ok"], 200);
    assert_eq!(report["target"]["ok"], 100);
    assert!(report["overhead_ms"]["p50"].is_number());
    assert!(report["overhead_ms"]["p99"].is_number());

    // Warm-up included: 3 phases of 0.6 s at 200 req/s.
    let stats = mock.stats();
    assert_eq!(stats.total, 360);
    assert_eq!(stats.by_model.get("gpt-4o-mini"), Some(&360));
    let recorded = mock.requests();
    let last = recorded.last().expect("recorded");
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(
        last.headers.get("x-bench-tag").map(String::as_str),
        Some("e2e")
    );
    assert_eq!(last.body["max_tokens"], 16);
    let prompt = last.body["messages"][1]["content"]
        .as_str()
        .expect("prompt");
    assert!(prompt.len() >= 512 && prompt.contains('@'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_status() {
    let mock = MockServer::start(Options {
        openai_keys: vec!["sk-good".to_owned()],
        ..Options::default()
    })
    .await
    .expect("start mock");
    let mut args = common_args(&mock.url());
    args.extend(["--header".to_owned(), "x-mock-status: 503".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = bench(&args).await;
    assert_eq!(report["target"]["ok"], 0);
    assert_eq!(report["target"]["responses"], 100);
    assert_eq!(report["target"]["errors"], serde_json::json!({"503": 100}));
    assert!(report["direct"].is_null());
    assert!(report["overhead_ms"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_path_uses_x_api_key() {
    let mock = MockServer::start(Options {
        anthropic_keys: vec!["sk-good".to_owned()],
        record: true,
        ..Options::default()
    })
    .await
    .expect("start mock");
    let mut args = common_args(&mock.url());
    args.extend([
        "--path".to_owned(),
        "/v1/messages".to_owned(),
        "--stream".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = bench(&args).await;
    assert_eq!(report["target"]["ok"], 100, "{report}");
    let recorded = mock.requests();
    let last = recorded.last().expect("recorded");
    assert_eq!(
        last.headers.get("x-api-key").map(String::as_str),
        Some("sk-good")
    );
    assert_eq!(last.body["stream"], true);
}
