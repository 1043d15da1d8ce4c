//! Exec through a real agent process over a Unix socket.

mod common;

use common::{TestAgent, eventually, process_exists, process_running};
use hearth_agent::client::{ClientError, ExecEvent};
use hearth_agent::proto::{ErrorCode, ExecSpec, ExitStatus, OutputStream};
use std::time::{Duration, Instant};

#[tokio::test]
async fn shell_script_output_and_exit_code() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let out = client
        .exec_collect(ExecSpec::script(
            "echo one\necho two >&2\necho three\nexit 7",
        ))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"one\nthree\n");
    assert_eq!(out.stderr, b"two\n");
    assert_eq!(out.info.status, ExitStatus::Code(7));
    assert!(!out.info.timed_out && !out.info.cancelled);
    assert!(
        out.info.peak_rss_kib > 0,
        "peak RSS reported: {:?}",
        out.info
    );
    assert!(out.info.wall_time_us > 0);
}

#[tokio::test]
async fn argv_env_cwd_and_stdin() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut spec = ExecSpec::argv(["sh", "-c", "echo \"$GREETING\"; pwd; cat"]);
    spec.env
        .push((b"GREETING".to_vec(), b"hello world".to_vec()));
    spec.cwd = Some(b"/tmp".to_vec());
    spec.stdin = Some(b"from stdin\n".to_vec());
    let out = client.exec_collect(spec).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello world\n/tmp\nfrom stdin\n"
    );
    assert_eq!(out.info.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn killed_by_signal_is_reported() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let out = client
        .exec_collect(ExecSpec::script("kill -TERM $$; sleep 5"))
        .await
        .unwrap();
    assert_eq!(out.info.status, ExitStatus::Signal(libc::SIGTERM));
}

#[tokio::test]
async fn non_utf8_output_arrives_intact() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let out = client
        .exec_collect(ExecSpec::script(r"printf '\377\376\000\200abc\303'"))
        .await
        .unwrap();
    assert_eq!(out.stdout, [0xff, 0xfe, 0x00, 0x80, b'a', b'b', b'c', 0xc3]);
}

#[tokio::test]
async fn missing_program_is_an_error_frame() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let err = client
        .exec_collect(ExecSpec::argv(["/definitely/not/here"]))
        .await
        .unwrap_err();
    match err {
        ClientError::Agent {
            code: ErrorCode::SpawnFailed,
            message,
        } => {
            assert!(message.contains("/definitely/not/here"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = client
        .exec_collect(ExecSpec::argv(Vec::<Vec<u8>>::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{err:?}"
    );
    // the connection still works afterwards
    client.ping().await.unwrap();
}

#[tokio::test]
async fn sixteen_concurrent_execs_on_one_connection() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let script = format!("sleep 0.5; for j in 1 2 3; do echo task{i}-$j; done; exit {i}");
            client.exec_collect(ExecSpec::script(script)).await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("task{i}-1\ntask{i}-2\ntask{i}-3\n")
        );
        assert_eq!(out.info.status, ExitStatus::Code(i as i32));
    }
    // They ran at the same time, not one after another (16 x 0.5 s = 8 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    // The background sleep is a grandchild in the same process group.
    let mut stream = client
        .exec(ExecSpec::script("sleep 1000 & echo $!; wait"))
        .await
        .unwrap();
    let mut grandchild = None;
    let mut child_pid = None;
    while grandchild.is_none() {
        match stream.next().await.unwrap().unwrap() {
            ExecEvent::Started { pid } => child_pid = Some(pid),
            ExecEvent::Output {
                stream: OutputStream::Stdout,
                data,
            } => {
                grandchild = Some(
                    String::from_utf8(data)
                        .unwrap()
                        .trim()
                        .parse::<u32>()
                        .unwrap(),
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (grandchild, child_pid) = (grandchild.unwrap(), child_pid.unwrap());
    assert!(process_running(grandchild));
    stream.cancel().await.unwrap();
    let info = loop {
        if let ExecEvent::Exited(info) = stream.next().await.unwrap().unwrap() {
            break info;
        }
    };
    assert!(info.cancelled);
    assert_eq!(info.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(eventually(Duration::from_secs(5), || !process_exists(grandchild)).await);
    assert!(!process_exists(child_pid));
}

#[tokio::test]
async fn signal_reaches_the_process_group() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut stream = client
        .exec(ExecSpec::script(
            "trap 'echo got-usr1; exit 42' USR1; echo ready; while :; do sleep 0.05; done",
        ))
        .await
        .unwrap();
    let mut out = Vec::new();
    while !out.ends_with(b"ready\n") {
        if let ExecEvent::Output { data, .. } = stream.next().await.unwrap().unwrap() {
            out.extend(data);
        }
    }
    stream.handle().signal(libc::SIGUSR1).await.unwrap();
    let rest = stream.collect().await.unwrap();
    assert_eq!(rest.stdout, b"got-usr1\n");
    assert_eq!(rest.info.status, ExitStatus::Code(42));
}

#[tokio::test]
async fn timeout_kills_and_says_so() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut spec = ExecSpec::script("echo start; sleep 30");
    spec.timeout_ms = Some(300);
    let started = Instant::now();
    let out = client.exec_collect(spec).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out.stdout, b"start\n");
    assert!(out.info.timed_out);
    assert!(!out.info.cancelled);
    assert_eq!(out.info.status, ExitStatus::Signal(libc::SIGKILL));
}

#[tokio::test]
async fn child_crash_does_not_take_the_agent_down() {
    let mut agent = TestAgent::start();
    let client = agent.client().await;
    let out = client
        .exec_collect(ExecSpec::script("kill -SEGV $$"))
        .await
        .unwrap();
    assert_eq!(out.info.status, ExitStatus::Signal(libc::SIGSEGV));
    assert!(agent.alive());
    client.ping().await.unwrap();
}

#[tokio::test]
async fn orphans_are_adopted_and_reaped() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    // setsid moves the sleeper out of the exec's group, so it outlives the
    // exec; it is re-parented to the agent (a subreaper on the host, PID 1 in
    // a guest), which must reap it or it stays behind as a zombie.
    let out = client
        .exec_collect(ExecSpec::script(
            // Wait until the child really is in its own session (field 6 of /proc/PID/stat):
            // the agent ends the exec's process group when the script exits, and a child that
            // has not reached setsid(2) yet would go with it.
            "setsid sh -c 'sleep 60' >/dev/null 2>&1 </dev/null & p=$!; i=0; \
             while [ \"$(cut -d' ' -f6 /proc/$p/stat)\" != \"$p\" ] && [ $i -lt 1000 ]; do \
             i=$((i+1)); sleep 0.01; done; echo $p",
        ))
        .await
        .unwrap();
    let orphan: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, agent.pid(), "orphan was not adopted by the agent");
    // End the orphan ourselves (a timed sleep races a loaded machine): once it dies, only the
    // agent's reaping removes it from /proc.
    // SAFETY: kill(2) with a pid we just read and a valid signal number touches no memory.
    assert_eq!(unsafe { libc::kill(orphan as i32, libc::SIGKILL) }, 0);
    assert!(
        eventually(Duration::from_secs(5), || !process_exists(orphan)).await,
        "orphan {orphan} was not reaped (zombie left behind)"
    );
}

#[tokio::test]
async fn runs_as_the_requested_user_and_group() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut spec = ExecSpec::script("id -u; id -g; id -G; echo $HOME");
    spec.uid = Some(65534);
    spec.gid = Some(65533);
    let out = client.exec_collect(spec).await.unwrap();
    // uid/gid changes need root, which the agent has in a guest.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "65534\n65533\n65533\n/\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn huge_timeout_is_no_timeout() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut spec = ExecSpec::script("echo fine");
    spec.timeout_ms = Some(u64::MAX);
    let out = client.exec_collect(spec).await.unwrap();
    assert_eq!(out.stdout, b"fine\n");
    assert!(!out.info.timed_out);
}
