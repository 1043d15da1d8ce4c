//! Auth and error status codes of the embedded `/.executors/` API, as the frontend answers them.

mod queue_common;

use hearth::queue::store::StoreOptions;
use queue_common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn executor_routes_need_token_executor() {
    let h = Harness::start(StoreOptions::default()).await;
    let url = format!("{}/.executors/queue/batches/dequeue", h.base);
    let body = json!({"executorName":"e","version":"5.5.0"}).to_string();
    let cases: [(&[(&str, &str)], StatusCode); 5] = [
        (&[], StatusCode::UNAUTHORIZED),
        (
            &[("Authorization", "token-executor")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            &[("Authorization", "Bearer sometoken")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            &[("Authorization", "token-executor wrong")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            &[("Authorization", "token-executor hunter2hunter2hunter2")],
            StatusCode::NO_CONTENT,
        ),
    ];
    for (headers, want) in cases {
        let (status, _) = h.post_with(&url, headers, body.clone()).await;
        assert_eq!(status, want, "{headers:?}");
    }
    let (_, text) = h
        .post_with(
            &url,
            &[("Authorization", "token-executor wrong")],
            body.clone(),
        )
        .await;
    assert_eq!(text, "", "a wrong secret gets an empty 401");
    let (status, text) = h
        .post(&url, &h.executor_auth(), json!("not an object"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.starts_with("Failed to unmarshal payload: "), "{text}");

    let auth_url = format!("{}/.executors/test/auth", h.base);
    let res = h
        .http
        .get(&auth_url)
        .header("Authorization", h.executor_auth())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "ok");
    h.client(single("batches"), "e").test_auth().await.unwrap();
    let res = h
        .http
        .get(&auth_url)
        .header("Authorization", "token-executor nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unconfigured_secret_is_500() {
    let h = Harness::start_with_secret(StoreOptions::default(), None).await;
    let url = format!("{}/.executors/queue/batches/dequeue", h.base);
    let (status, text) = h
        .post(
            &url,
            &h.executor_auth(),
            json!({"executorName":"e","version":"5.5.0"}),
        )
        .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Executors are not configured on this instance"
        )
    );
}

#[tokio::test]
async fn job_routes_check_the_job_token() {
    let h = Harness::start(StoreOptions::default()).await;
    let a = h.store.submit("batches", &job("r/a")).unwrap();
    let b = h.store.submit("batches", &job("r/b")).unwrap();
    let c = h.client(single("batches"), "ex");
    let ja = c.dequeue().await.unwrap().unwrap();
    let jb = c.dequeue().await.unwrap().unwrap();
    assert_eq!((ja.id, jb.id), (a, b));
    let add = |queue: &str| format!("{}/.executors/queue/{queue}/addExecutionLogEntry", h.base);
    let body = |id: i64| {
        json!({"executorName":"ex","jobId":id,"key":"k","command":[],"startTime":"2026-01-01T00:00:00Z"}).to_string()
    };
    let bearer_a = format!("Bearer {}", ja.token);
    let a_id = a.to_string();

    // Before the executor's first heartbeat it is unknown: 401.
    let headers = [
        ("Authorization", bearer_a.as_str()),
        ("X-Sourcegraph-Job-ID", a_id.as_str()),
        ("X-Sourcegraph-Executor-Name", "ex"),
    ];
    let (status, _) = h.post_with(&add("batches"), &headers, body(a)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    c.ping().await.unwrap();
    let (status, text) = h.post_with(&add("batches"), &headers, body(a)).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "1"));

    let b_id = b.to_string();
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, StatusCode);
    let cases: Vec<Case> = vec![
        // Missing or malformed job id header.
        (
            vec![
                ("Authorization", &bearer_a),
                ("X-Sourcegraph-Executor-Name", "ex"),
            ],
            "batches",
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![
                ("Authorization", &bearer_a),
                ("X-Sourcegraph-Job-ID", "abc"),
                ("X-Sourcegraph-Executor-Name", "ex"),
            ],
            "batches",
            StatusCode::BAD_REQUEST,
        ),
        // Empty executor name.
        (
            vec![
                ("Authorization", &bearer_a),
                ("X-Sourcegraph-Job-ID", &a_id),
            ],
            "batches",
            StatusCode::BAD_REQUEST,
        ),
        // Unknown token.
        (
            vec![
                ("Authorization", "Bearer nope"),
                ("X-Sourcegraph-Job-ID", &a_id),
                ("X-Sourcegraph-Executor-Name", "ex"),
            ],
            "batches",
            StatusCode::UNAUTHORIZED,
        ),
        // Job a's token used for job b.
        (
            vec![
                ("Authorization", &bearer_a),
                ("X-Sourcegraph-Job-ID", &b_id),
                ("X-Sourcegraph-Executor-Name", "ex"),
            ],
            "batches",
            StatusCode::FORBIDDEN,
        ),
        // Token of a batches job on the codeintel route.
        (
            vec![
                ("Authorization", &bearer_a),
                ("X-Sourcegraph-Job-ID", &a_id),
                ("X-Sourcegraph-Executor-Name", "ex"),
            ],
            "codeintel",
            StatusCode::FORBIDDEN,
        ),
        // An executor name that never heartbeated.
        (
            vec![
                ("Authorization", &bearer_a),
                ("X-Sourcegraph-Job-ID", &a_id),
                ("X-Sourcegraph-Executor-Name", "ghost"),
            ],
            "batches",
            StatusCode::UNAUTHORIZED,
        ),
        // Shared-secret fallback: a wrong secret is 403 on job routes, the right one passes.
        (
            vec![("Authorization", "token-executor wrong")],
            "batches",
            StatusCode::FORBIDDEN,
        ),
        (
            vec![("Authorization", "token-executor hunter2hunter2hunter2")],
            "batches",
            StatusCode::OK,
        ),
        // Unknown scheme.
        (
            vec![("Authorization", "Basic abc")],
            "batches",
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (headers, queue, want) in cases {
        let (status, text) = h.post_with(&add(queue), &headers, body(a)).await;
        assert_eq!(status, want, "{headers:?} on {queue}: {text}");
    }
    assert_eq!(
        h.store.logs(a).unwrap().len(),
        2,
        "only the two authorised adds landed"
    );
}

#[tokio::test]
async fn job_token_lifecycle() {
    let h = Harness::start(StoreOptions {
        stall_after: std::time::Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let id = h.store.submit("batches", &job("r/a")).unwrap();
    let c = h.client(single("batches"), "ex");
    c.ping().await.unwrap();
    let first = c.dequeue().await.unwrap().unwrap();
    assert_eq!(
        h.store.token_info(&first.token).unwrap().unwrap().job_id,
        id,
        "created at dequeue"
    );
    // No heartbeat: the reaper resets the job and drops its token.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while h.store.token_info(&first.token).unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "job was never reset");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let second = c.dequeue().await.unwrap().unwrap();
    assert_eq!(second.id, id);
    assert_ne!(second.token, first.token, "regenerated on re-dequeue");
    let stale = c.job_ref(&first).unwrap();
    let err = c.mark_complete(&stale).await.unwrap_err();
    assert!(err.to_string().contains("status code 401"), "{err}");
    let fresh = c.job_ref(&second).unwrap();
    c.heartbeat(&[second.record_uid()], &Default::default())
        .await
        .unwrap();
    assert!(c.mark_complete(&fresh).await.unwrap());
    assert!(
        h.store.token_info(&second.token).unwrap().is_none(),
        "deleted at mark*"
    );
}
