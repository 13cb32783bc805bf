//! Pods: binding pending pods to this node, and one supervisor per bound pod
//! that builds its sandbox and volumes, runs its containers as processes,
//! restarts them by restartPolicy, runs readiness probes, reports status
//! through pods/status and, on deletion, stops everything within the grace
//! period and removes the pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::sandbox::Sandbox;
use crate::{Agent, image, logs, probe, spec, volumes};

/// The supervisors of the pods this agent runs, by pod UID.
#[derive(Default)]
pub struct Registry {
    pods: Mutex<HashMap<String, Handle>>,
}

struct Handle {
    /// `Some(Stop)` asks the supervisor to stop the pod.
    stop: watch::Sender<Option<Stop>>,
    task: tokio::task::JoinHandle<()>,
}

/// How to stop a pod.
#[derive(Clone, Copy, Debug)]
struct Stop {
    /// Seconds for preStop hooks and SIGTERM before SIGKILL.
    grace: i64,
    /// Delete the pod object afterwards (a pod deletion), or leave it (agent shutdown:
    /// like kubelet, the agent does not delete pods when it stops).
    remove: bool,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Watches all pods and reconciles on every change (and every 5 s, which
/// retries failed bindings).
pub async fn run(agent: Arc<Agent>) -> Result<()> {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let (reader, writer) = reflector::store();
    let notify = Arc::new(tokio::sync::Notify::new());
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff().touched_objects();
    let events = {
        let notify = notify.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => notify.notify_one(),
                    Err(e) => tracing::warn!("pod watch: {e}"),
                }
            }
        })
    };
    reader.wait_until_ready().await.context("waiting for the pod cache")?;
    loop {
        reconcile(&agent, &reader).await;
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if events.is_finished() {
            anyhow::bail!("the pod watch ended");
        }
    }
}

fn ours(agent: &Agent, pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| n == agent.cli.node_name)
}

fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

async fn reconcile(agent: &Arc<Agent>, store: &Store<Pod>) {
    let pods = store.state();
    let mut seen = HashSet::new();
    for pod in &pods {
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        let spec = pod.spec.as_ref();
        let unscheduled = spec.is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty());
        let our_scheduler = spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|s| s == "default-scheduler");
        if unscheduled && our_scheduler && pod.metadata.deletion_timestamp.is_none() {
            if let Err(e) = bind(agent, pod).await {
                tracing::warn!("binding {}/{}: {e:#}", pod.namespace().unwrap_or_default(), pod.name_any());
            }
            continue;
        }
        if !ours(agent, pod) {
            continue;
        }
        seen.insert(uid.clone());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let mut registry = agent.pods.lock();
        match registry.get(&uid) {
            Some(handle) => {
                if deleting && handle.stop.borrow().is_none() {
                    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
                    let _ = handle.stop.send(Some(Stop { grace, remove: true }));
                }
            }
            None if deleting => {
                // Never started here (or started by an agent that is gone):
                // nothing runs, so the pod can go at once.
                let agent = agent.clone();
                let pod = (**pod).clone();
                tokio::spawn(async move { finalize(&agent, &pod).await });
            }
            None if terminal(pod) => {}
            None => {
                let (stop, stop_rx) = watch::channel(None);
                let task = tokio::spawn(supervise(agent.clone(), (**pod).clone(), stop_rx));
                registry.insert(uid, Handle { stop, task });
            }
        }
    }
    // Supervisors whose pod vanished (force-deleted) stop at once; finished
    // supervisors leave the registry.
    let mut registry = agent.pods.lock();
    registry.retain(|uid, handle| {
        if !seen.contains(uid) && handle.stop.borrow().is_none() {
            let _ = handle.stop.send(Some(Stop { grace: 0, remove: true }));
        }
        !handle.task.is_finished()
    });
}

async fn bind(agent: &Agent, pod: &Pod) -> Result<()> {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": agent.cli.node_name},
    });
    match api.create_subresource::<Value, Value>("binding", &name, &PostParams::default(), &binding).await {
        Ok(_) => {
            tracing::info!("bound {ns}/{name} to {}", agent.cli.node_name);
            Ok(())
        }
        // Already bound (a race with an earlier pass): not an error.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Stops every supervisor (agent shutdown): containers get a short grace.
pub async fn shutdown(agent: &Agent) {
    let handles: Vec<Handle> = agent.pods.lock().drain().map(|(_, h)| h).collect();
    for h in &handles {
        let _ = h.stop.send(Some(Stop { grace: 2, remove: false }));
    }
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), h.task).await;
    }
}

/// Removes what the node kept for a pod and deletes the pod object (the
/// final step of a graceful deletion, as kubelet does).
async fn finalize(agent: &Agent, pod: &Pod) {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    if let Some(dir) = logs::path(&agent.cli.state_dir, &ns, &name, "x").parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Some(uid) = &pod.metadata.uid {
        let _ = std::fs::remove_dir_all(agent.cli.state_dir.join("pods").join(uid));
    }
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), &ns);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => tracing::info!("pod {ns}/{name} removed"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!("deleting pod {ns}/{name}: {e}"),
    }
}

// --- one pod -----------------------------------------------------------------

/// What a container is doing, for containerStatuses.
#[derive(Clone, Debug)]
enum State {
    Waiting { reason: String, message: String },
    Running { started: Time, pid: i32 },
    Terminated { code: i32, signal: Option<i32>, started: Time, finished: Time },
}

struct Slot {
    spec: Container,
    init: bool,
    state: State,
    last: Option<State>,
    restarts: i32,
    ready: bool,
    probe_successes: i32,
    probe_failures: i32,
    next_probe: Instant,
    probing: bool,
    restart_at: Option<Instant>,
    backoff: Duration,
    log: Option<logs::LogFile>,
}

impl Slot {
    fn new(spec: Container, init: bool) -> Slot {
        Slot {
            spec,
            init,
            state: State::Waiting { reason: "ContainerCreating".into(), message: String::new() },
            last: None,
            restarts: 0,
            ready: false,
            probe_successes: 0,
            probe_failures: 0,
            next_probe: Instant::now(),
            probing: false,
            restart_at: None,
            backoff: Duration::from_secs(1),
            log: None,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { code: 0, .. })
    }
}

enum Event {
    Exited { index: usize, code: i32, signal: Option<i32> },
    Probe { index: usize, ok: bool },
}

/// Opens the program (fd 3) before the volume mounts, which may hide its path (a volume
/// at /root, say), mounts, then executes the opened file.
const MOUNT_SCRIPT: &str = r#"exec 3<"$1" || exit 127
shift
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
  if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")"; [ -e "$2" ] || : >"$2"; fi
  mount --bind "$1" "$2" || exit 125
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 125; fi
  shift 3
done
shift
exec /proc/self/fd/3 "$@""#;

/// Runs a container of an OCI image (inside `ip netns exec`, which gives it its own
/// mount namespace): an overlay of the image's root filesystem with a per-container
/// upper dir, /proc, a minimal /dev, the volumes, the root made read-only when asked,
/// then `chroot` as the container's user and groups with no_new_privs (kubelet's
/// allowPrivilegeEscalation: false). Arguments: LOWER UPPER WORK ROOT ro|rw UID:GID
/// GROUPS, then (source target ro|rw)... --, then the command line.
const IMAGE_SCRIPT: &str = r#"lower=$1 upper=$2 work=$3 root=$4 rootmode=$5 user=$6 groups=$7
shift 7
mkdir -p "$upper" "$work" "$root" || exit 125
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root" || exit 125
mount -t proc proc "$root/proc" || exit 125
mount -t tmpfs -o nosuid,noexec,mode=755 tmpfs "$root/dev" || exit 125
for d in null zero full random urandom; do : >"$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d" || exit 125; done
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp" || exit 125
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
  t="$root$2"
  if [ -d "$1" ]; then mkdir -p "$t"; else mkdir -p "$(dirname "$t")"; [ -e "$t" ] || : >"$t"; fi
  mount --bind "$1" "$t" || exit 125
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$t" || exit 125; fi
  shift 3
done
shift
if [ "$rootmode" = ro ]; then mount -o remount,ro "$root" || exit 125; fi
exec setpriv --no-new-privs chroot --userspec="$user" --groups="$groups" "$root" "$@""#;

struct Pod1 {
    agent: Arc<Agent>,
    pod: Pod,
    ns: String,
    name: String,
    dir: PathBuf,
    sandbox: Option<Sandbox>,
    ip: Option<Ipv4Addr>,
    volumes: volumes::Volumes,
    slots: Vec<Slot>,
    started: Time,
    conditions: BTreeMap<&'static str, (bool, Time)>,
    posted: Option<Value>,
    /// After a failed status write, the next one waits until then.
    post_after: Option<Instant>,
    events: mpsc::Sender<Event>,
}

/// Waits for a stop request (a dropped registry handle stops the pod at once).
async fn stop_requested(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    let how = match stop.changed().await {
        Ok(()) => *stop.borrow(),
        Err(_) => None,
    };
    how.unwrap_or(Stop { grace: 0, remove: true })
}

async fn supervise(agent: Arc<Agent>, pod: Pod, mut stop: watch::Receiver<Option<Stop>>) {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = agent.cli.state_dir.join("pods").join(&uid);
    let (tx, mut rx) = mpsc::channel(64);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut slots: Vec<Slot> = spec.init_containers.iter().flatten().map(|c| Slot::new(c.clone(), true)).collect();
    slots.extend(spec.containers.iter().map(|c| Slot::new(c.clone(), false)));
    let mut p = Pod1 {
        volumes: volumes::Volumes::new(&dir),
        agent,
        pod,
        ns,
        name,
        dir,
        sandbox: None,
        ip: None,
        slots,
        started: Time(jiff::Timestamp::now()),
        conditions: BTreeMap::new(),
        posted: None,
        post_after: None,
        events: tx,
    };
    tracing::info!("starting pod {}/{}", p.ns, p.name);
    // Set up until it works or the pod is deleted; errors show in status.
    loop {
        match p.setup().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!("pod {}/{}: {e:#}", p.ns, p.name);
                p.set_waiting("ContainerCreating", &format!("{e:#}"));
                p.post_status().await;
            }
        }
        tokio::select! {
            how = stop_requested(&mut stop) => {
                p.teardown(how).await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    let mut refresh = tokio::time::interval(Duration::from_secs(30));
    refresh.tick().await;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        p.step().await;
        p.post_status().await;
        tokio::select! {
            how = stop_requested(&mut stop) => {
                p.teardown(how).await;
                return;
            }
            Some(event) = rx.recv() => p.handle(event).await,
            _ = refresh.tick() => {
                if let Some(ip) = p.ip
                    && let Err(e) = p.volumes.materialize(&p.agent, &p.pod, ip).await
                {
                    tracing::warn!("pod {}/{}: refreshing volumes: {e:#}", p.ns, p.name);
                }
            }
            _ = tick.tick() => {}
        }
    }
}

impl Pod1 {
    fn restart_policy(&self) -> &str {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
    }

    fn set_waiting(&mut self, reason: &str, message: &str) {
        for slot in &mut self.slots {
            if let State::Waiting { .. } = slot.state {
                slot.state = State::Waiting { reason: reason.into(), message: message.into() };
            }
        }
    }

    async fn setup(&mut self) -> Result<()> {
        let cli = &self.agent.cli;
        if self.sandbox.is_none() {
            let ip = match self.ip {
                Some(ip) => ip,
                None => {
                    let ip = self.agent.ips.allocate()?;
                    self.ip = Some(ip);
                    ip
                }
            };
            let uid = self.pod.metadata.uid.clone().unwrap_or_default();
            let sandbox = Sandbox::create(&uid, ip, &cli.bridge, cli.node_ip, cli.pod_prefix, &cli.test_range).await?;
            // The pod's sysctls, in its own network namespace (only net.* ones are
            // namespaced; kubelet refuses the rest as unsafe by default).
            let sysctls =
                self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|c| c.sysctls.clone());
            for sysctl in sysctls.into_iter().flatten() {
                if !sysctl.name.starts_with("net.")
                    || !sysctl.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    bail!("sysctl {} is not a namespaced net.* sysctl", sysctl.name);
                }
                crate::sandbox::ip(&[
                    "netns",
                    "exec",
                    &sandbox.netns,
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("{}={}", sysctl.name, sysctl.value),
                ])
                .await
                .with_context(|| format!("setting sysctl {}", sysctl.name))?;
            }
            self.sandbox = Some(sandbox);
            self.set_condition("PodReadyToStartContainers", true);
        }
        std::fs::create_dir_all(&self.dir)?;
        if let Some(ip) = self.ip {
            self.volumes.materialize(&self.agent, &self.pod, ip).await?;
        }
        Ok(())
    }

    fn set_condition(&mut self, kind: &'static str, value: bool) {
        match self.conditions.get(kind) {
            Some((v, _)) if *v == value => {}
            _ => {
                self.conditions.insert(kind, (value, Time(jiff::Timestamp::now())));
            }
        }
    }

    /// Starts what should run now: init containers one at a time, then all
    /// app containers; restarts exited ones when their backoff is over;
    /// schedules readiness probes.
    async fn step(&mut self) {
        let now = Instant::now();
        let policy = self.restart_policy().to_string();
        let first_pending_init = self.slots.iter().position(|s| s.init && !s.succeeded());
        let init_done = first_pending_init.is_none();
        self.set_condition("Initialized", init_done);
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            let eligible = if slot.init { Some(index) == first_pending_init } else { init_done };
            if !eligible || slot.running() {
                continue;
            }
            let start = match &slot.state {
                State::Waiting { .. } => slot.restart_at.is_none_or(|t| now >= t),
                State::Terminated { code, .. } => {
                    let again = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => *code != 0,
                        _ => !slot.init || *code != 0,
                    };
                    if again && slot.restart_at.is_none() {
                        let slot = &mut self.slots[index];
                        slot.restart_at = Some(now + slot.backoff);
                        slot.backoff = (slot.backoff * 2).min(Duration::from_secs(20));
                        slot.last = Some(slot.state.clone());
                        slot.state = State::Waiting {
                            reason: "CrashLoopBackOff".into(),
                            message: "back-off restarting the failed container".into(),
                        };
                    }
                    false
                }
                State::Running { .. } => false,
            };
            if start && let Err(e) = self.start(index).await {
                tracing::warn!("pod {}/{} container {}: {e:#}", self.ns, self.name, self.slots[index].spec.name);
                let slot = &mut self.slots[index];
                slot.state = State::Waiting { reason: "CreateContainerError".into(), message: format!("{e:#}") };
                // Retried (env, image map, mounts) every 2 s.
                slot.restart_at = Some(now + Duration::from_secs(2));
            }
        }
        // Readiness probes.
        let Some(ip) = self.ip else { return };
        let netns = self.sandbox.as_ref().map(|s| s.netns.clone()).unwrap_or_default();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.init || !slot.running() {
                continue;
            }
            let Some(probe) = slot.spec.readiness_probe.clone() else {
                slot.ready = true;
                continue;
            };
            if slot.probing || now < slot.next_probe {
                continue;
            }
            slot.probing = true;
            slot.next_probe = now + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
            let container = slot.spec.clone();
            let events = self.events.clone();
            let netns = netns.clone();
            tokio::spawn(async move {
                let ok = probe::check(&probe, &container, ip, &netns).await.is_ok();
                let _ = events.send(Event::Probe { index, ok }).await;
            });
        }
    }

    async fn start(&mut self, index: usize) -> Result<()> {
        let ip = self.ip.context("no pod IP")?;
        let netns = self.sandbox.as_ref().context("no sandbox")?.netns.clone();
        let container = self.slots[index].spec.clone();
        let mut env = spec::environment(&self.agent, &self.pod, &container, ip).await?;
        let mounts = self.mounts(&container)?;
        let archive = self.agent.archives.get(spec::image_name(container.image.as_deref().unwrap_or_default()));
        let mut cmd = tokio::process::Command::new("ip");
        let (program, args, workdir) = match archive {
            Some(archive) => {
                let image = self.agent.unpacked.get(archive, &self.agent.cli.state_dir).await?;
                for (name, value) in &image.env {
                    env.entry(name.clone()).or_insert_with(|| value.clone());
                }
                let command: Vec<String> = container.command.iter().flatten().map(|c| spec::expand(c, &env)).collect();
                let args = container.args.as_ref().map(|a| a.iter().map(|a| spec::expand(a, &env)).collect());
                let line = image::command_line(&image, &command, args)?;
                let (user, groups, read_only) = self.identity(&container, &image)?;
                let scratch = self.dir.join("containers").join(&container.name);
                // A restarted container starts from the image again, as with a runtime.
                let _ = std::fs::remove_dir_all(&scratch);
                cmd.args(["netns", "exec", &netns, "/bin/sh", "-c", IMAGE_SCRIPT, "sh"])
                    .arg(&image.rootfs)
                    .arg(scratch.join("upper"))
                    .arg(scratch.join("work"))
                    .arg(scratch.join("root"))
                    .arg(if read_only { "ro" } else { "rw" })
                    .arg(user)
                    .arg(groups);
                (PathBuf::from(&line[0]), line[1..].to_vec(), self.dir.clone())
            }
            None => {
                let (program, args) = spec::program(&self.agent.images, &container, &env)?;
                cmd.args(["netns", "exec", &netns, "/bin/sh", "-c", MOUNT_SCRIPT, "sh"]).arg(&program);
                (program, args, spec::working_dir(&container, &self.dir)?)
            }
        };
        let log = match &self.slots[index].log {
            Some(l) => l.clone(),
            None => {
                let path = logs::path(&self.agent.cli.state_dir, &self.ns, &self.name, &container.name);
                let l = logs::open(&path).await?;
                self.slots[index].log = Some(l.clone());
                l
            }
        };
        for (src, dst, ro) in &mounts {
            cmd.arg(src).arg(dst).arg(if *ro { "ro" } else { "rw" });
        }
        cmd.arg("--");
        if archive.is_some() {
            cmd.arg(&program);
        }
        cmd.args(&args);
        cmd.env_clear()
            .envs(&env)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().context("child has no pid")? as i32;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(logs::capture(out, "stdout", log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(logs::capture(err, "stderr", log.clone()));
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let (code, signal) = match child.wait().await {
                Ok(status) => (status.code().unwrap_or(128 + status.signal().unwrap_or(0)), status.signal()),
                Err(_) => (255, None),
            };
            let _ = events.send(Event::Exited { index, code, signal }).await;
        });
        tracing::info!(
            "pod {}/{} container {} started: {} {} (pid {pid})",
            self.ns,
            self.name,
            container.name,
            program.display(),
            args.join(" ")
        );
        let slot = &mut self.slots[index];
        if matches!(slot.state, State::Waiting { ref reason, .. } if reason == "CrashLoopBackOff") {
            slot.restarts += 1;
        }
        slot.state = State::Running { started: Time(jiff::Timestamp::now()), pid };
        slot.restart_at = None;
        slot.ready = false;
        slot.probe_successes = 0;
        slot.probe_failures = 0;
        let delay = slot.spec.readiness_probe.as_ref().and_then(|p| p.initial_delay_seconds).unwrap_or(0);
        slot.next_probe = Instant::now() + Duration::from_secs(delay.max(0) as u64);
        Ok(())
    }

    /// `uid:gid`, the supplementary groups (fsGroup, supplementalGroups) and whether
    /// the root filesystem is read-only, for a container of an image.
    fn identity(&self, container: &Container, image: &image::Image) -> Result<(String, String, bool)> {
        let pod = self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let own = container.security_context.as_ref();
        let run_as_user = own.and_then(|c| c.run_as_user).or(pod.and_then(|p| p.run_as_user));
        let run_as_group = own.and_then(|c| c.run_as_group).or(pod.and_then(|p| p.run_as_group));
        let (uid, gid) = image::user(image, run_as_user, run_as_group)?;
        let run_as_non_root = own.and_then(|c| c.run_as_non_root).or(pod.and_then(|p| p.run_as_non_root));
        if run_as_non_root == Some(true) && uid == 0 {
            bail!("container has runAsNonRoot and image will run as root");
        }
        let mut groups = vec![gid];
        groups.extend(pod.and_then(|p| p.fs_group).and_then(|g| u32::try_from(g).ok()));
        groups.extend(
            pod.into_iter().flat_map(|p| p.supplemental_groups.iter().flatten()).filter_map(|g| u32::try_from(*g).ok()),
        );
        groups.dedup();
        let groups = groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let read_only = own.and_then(|c| c.read_only_root_filesystem) == Some(true);
        Ok((format!("{uid}:{gid}"), groups, read_only))
    }

    /// (host source, target, read-only) for each volumeMount, parents first;
    /// a mount whose target would hide the agent's state dir goes last, so
    /// the other sources are still reachable when they are mounted.
    fn mounts(&self, container: &Container) -> Result<Vec<(PathBuf, String, bool)>> {
        let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        let mut mounts = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let volume = volumes
                .iter()
                .find(|v| v.name == m.name)
                .with_context(|| format!("volumeMount {} names no volume", m.name))?;
            let mut source = self.volumes.source(volume);
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
            }
            mounts.push((source, m.mount_path.clone(), m.read_only == Some(true)));
        }
        let state = self.agent.cli.state_dir.clone();
        mounts.sort_by_key(|(_, target, _)| {
            let hides_state = state.starts_with(Path::new(target));
            (hides_state, Path::new(target).components().count())
        });
        Ok(mounts)
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Exited { index, code, signal } => {
                let slot = &mut self.slots[index];
                let started = match &slot.state {
                    State::Running { started, .. } => started.clone(),
                    _ => Time(jiff::Timestamp::now()),
                };
                let ran_long = jiff::Timestamp::now().duration_since(started.0) > jiff::SignedDuration::from_secs(60);
                if ran_long {
                    slot.backoff = Duration::from_secs(1);
                }
                slot.state = State::Terminated { code, signal, started, finished: Time(jiff::Timestamp::now()) };
                slot.ready = false;
                if let Some(log) = &slot.log {
                    logs::note(log, &format!("sluice-nodeagent: container exited with code {code}")).await;
                }
                tracing::info!("pod {}/{} container {} exited with {code}", self.ns, self.name, slot.spec.name);
            }
            Event::Probe { index, ok } => {
                let slot = &mut self.slots[index];
                slot.probing = false;
                if !slot.running() {
                    return;
                }
                let probe = slot.spec.readiness_probe.clone().unwrap_or_default();
                if ok {
                    slot.probe_failures = 0;
                    slot.probe_successes += 1;
                    if slot.probe_successes >= probe.success_threshold.unwrap_or(1) {
                        slot.ready = true;
                    }
                } else {
                    slot.probe_successes = 0;
                    slot.probe_failures += 1;
                    if slot.probe_failures >= probe.failure_threshold.unwrap_or(3) {
                        slot.ready = false;
                    }
                }
            }
        }
    }

    fn phase(&self) -> &'static str {
        let apps: Vec<&Slot> = self.slots.iter().filter(|s| !s.init).collect();
        let policy = self.restart_policy();
        let all_done = apps.iter().all(|s| matches!(s.state, State::Terminated { .. }) && s.restart_at.is_none());
        if policy != "Always" && all_done && !apps.is_empty() {
            let failed = apps.iter().any(|s| !s.succeeded());
            // OnFailure keeps restarting failures, so only Never ends Failed.
            if !failed {
                return "Succeeded";
            }
            if policy == "Never" {
                return "Failed";
            }
        }
        let started = apps.iter().any(|s| s.running() || s.restarts > 0 || matches!(s.state, State::Terminated { .. }));
        if started { "Running" } else { "Pending" }
    }

    fn status(&mut self) -> Value {
        let ready = self.slots.iter().filter(|s| !s.init).all(|s| s.running() && s.ready);
        self.set_condition("ContainersReady", ready);
        self.set_condition("Ready", ready);
        self.set_condition("PodScheduled", true);
        let image_id = |c: &Container| {
            let image = c.image.clone().unwrap_or_default();
            let path =
                self.agent.images.get(spec::image_name(&image)).map(|p| p.display().to_string()).unwrap_or_default();
            (image, format!("sluice-nodeagent://{path}"))
        };
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        let container_status = |s: &Slot| {
            let (image, image_id) = image_id(&s.spec);
            let container_id = format!("sluice://{uid}/{}/{}", s.spec.name, s.restarts);
            let render = |state: &State| match state {
                State::Waiting { reason, message } => {
                    json!({"waiting": {"reason": reason, "message": message}})
                }
                State::Running { started, .. } => json!({"running": {"startedAt": started}}),
                State::Terminated { code, signal, started, finished } => json!({"terminated": {
                    "exitCode": code, "signal": signal,
                    "reason": if *code == 0 { "Completed" } else { "Error" },
                    "startedAt": started, "finishedAt": finished, "containerID": container_id,
                }}),
            };
            json!({
                "name": s.spec.name,
                "image": image,
                "imageID": image_id,
                "containerID": container_id,
                "ready": s.ready && s.running(),
                "started": s.running(),
                "restartCount": s.restarts,
                "state": render(&s.state),
                "lastState": s.last.as_ref().map(render).unwrap_or_else(|| json!({})),
            })
        };
        let init: Vec<Value> = self.slots.iter().filter(|s| s.init).map(container_status).collect();
        let apps: Vec<Value> = self.slots.iter().filter(|s| !s.init).map(container_status).collect();
        let conditions: Vec<Value> = self
            .conditions
            .iter()
            .map(|(kind, (v, t))| {
                json!({"type": kind, "status": if *v { "True" } else { "False" }, "lastTransitionTime": t})
            })
            .collect();
        let host_ip = self.agent.cli.node_ip.to_string();
        let mut status = json!({
            "phase": self.phase(),
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self.started,
            "containerStatuses": apps,
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = Value::Array(init);
        }
        if let Some(ip) = self.ip
            && self.sandbox.is_some()
        {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{"ip": ip.to_string()}]);
        }
        status
    }

    async fn post_status(&mut self) {
        let status = self.status();
        if self.posted.as_ref() == Some(&status) || self.post_after.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.agent.client.clone(), &self.ns);
        let patch = json!({"status": status});
        match api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                self.posted = Some(status);
                self.post_after = None;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => self.posted = Some(status),
            Err(e) => {
                tracing::warn!("pod {}/{}: posting status (retrying in 2 s): {e}", self.ns, self.name);
                self.post_after = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }

    /// preStop hooks, TERM, KILL after the grace period, then the sandbox,
    /// the address, the files, and the pod object.
    async fn teardown(&mut self, how: Stop) {
        let grace = how.grace;
        let deadline = Instant::now() + Duration::from_secs(grace.max(0) as u64);
        let netns = self.sandbox.as_ref().map(|s| s.netns.clone());
        if grace > 0 {
            let hooks = self
                .slots
                .iter()
                .filter(|s| s.running())
                .filter_map(|s| s.spec.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()));
            let mut waits = Vec::new();
            for hook in hooks {
                let netns = netns.clone();
                waits.push(async move {
                    if let Some(sleep) = &hook.sleep {
                        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
                    } else if let (Some(exec), Some(netns)) = (&hook.exec, netns) {
                        let command = exec.command.clone().unwrap_or_default();
                        if !command.is_empty() {
                            let _ = tokio::process::Command::new("ip")
                                .args(["netns", "exec", &netns])
                                .args(&command)
                                .kill_on_drop(true)
                                .status()
                                .await;
                        }
                    }
                });
            }
            let _ = tokio::time::timeout_at(deadline.into(), futures::future::join_all(waits)).await;
        }
        let pids: Vec<i32> = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                State::Running { pid, .. } => Some(pid),
                _ => None,
            })
            .collect();
        for pid in &pids {
            let _ = killpg(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        // Wait until every process group is gone or the grace period is over.
        loop {
            self.reap();
            if !self.slots.iter().any(Slot::running) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for pid in &pids {
            let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.destroy().await;
        }
        if let Some(ip) = self.ip.take() {
            self.agent.ips.release(ip);
        }
        if how.remove {
            finalize(&self.agent, &self.pod).await;
        }
    }

    /// Marks containers whose process group is gone as exited.
    fn reap(&mut self) {
        for slot in &mut self.slots {
            if let State::Running { pid, started } = &slot.state
                && killpg(Pid::from_raw(*pid), None).is_err()
            {
                slot.state = State::Terminated {
                    code: 143,
                    signal: Some(15),
                    started: started.clone(),
                    finished: Time(jiff::Timestamp::now()),
                };
            }
        }
    }
}
