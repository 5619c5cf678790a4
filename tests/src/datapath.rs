//! The datapath loaded into the kernel (not attached anywhere), its maps
//! programmed through the agent's own translate → encode → diff path, and
//! packets pushed through it with BPF_PROG_TEST_RUN.

use std::time::Duration;

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions},
};
use lb_userspace::{
    datapath::{
        loader::{self, Capacities},
        maps::ServiceMaps,
    },
    tables::DesiredMaps,
    model::NodeContext,
    source::objects,
    sync::Syncer,
};

/// tc verdicts as the program returns them.
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub struct Datapath {
    ebpf: Ebpf,
    syncer: Syncer<ServiceMaps>,
}

/// What one run of a program did to a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub verdict: i32,
    pub packet: Vec<u8>,
}

impl Datapath {
    /// Loads and verifies the programs with fresh, unpinned maps.
    pub fn load(node: NodeContext) -> anyhow::Result<Self> {
        Self::load_with(node, Capacities::default())
    }

    pub fn load_with(node: NodeContext, capacities: Capacities) -> anyhow::Result<Self> {
        let mut ebpf = loader::load(None, capacities)?;
        let maps = ServiceMaps::from_ebpf(&mut ebpf)?;
        let syncer = Syncer::new(maps, DesiredMaps::default(), node);
        Ok(Self { ebpf, syncer })
    }

    /// Programs the maps from Kubernetes objects (YAML or JSON text).
    pub fn apply(&mut self, text: &str) -> anyhow::Result<()> {
        let objects = objects::parse(text)?;
        anyhow::ensure!(objects.problems.is_empty(), "unreadable objects: {:?}", objects.problems);
        let report = self.syncer.sync(&objects.services, &objects.slices)?;
        anyhow::ensure!(report.problems.is_empty(), "untranslatable objects: {:?}", report.problems);
        Ok(())
    }

    pub fn syncer_mut(&mut self) -> &mut Syncer<ServiceMaps> {
        &mut self.syncer
    }

    /// Runs `program` once on `packet`.
    pub fn run(&mut self, program: &str, packet: &[u8]) -> anyhow::Result<RunResult> {
        let prog = loader::program(&mut self.ebpf, program)?;
        let mut out = vec![0u8; packet.len() + 256];
        let result = prog.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(RunResult { verdict: result.return_value as i32, packet: out })
    }

    /// Runs `program` on `packet` `repeat` times in the kernel and returns
    /// the kernel's average time per run. The kernel reuses one buffer for
    /// all repetitions, so a rewriting program sees its own output from the
    /// second run on: callers pick packets whose output takes the same path.
    pub fn time(&mut self, program: &str, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        let prog = loader::program(&mut self.ebpf, program)?;
        let result = prog.test_run(TestRunOptions { data_in: Some(packet), repeat, ..Default::default() })?;
        Ok(result.duration)
    }
}
