//! How big and how long each part runs, per mode. Every load run is
//! bounded both in time and in operations.

use std::time::Duration;

/// `--smoke`: tiny sizes, one repetition, seconds (used by a test).
/// `--quick`: about a minute. Default: the full run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Smoke,
    Quick,
    Full,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Smoke => "smoke",
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }
}

/// Endpoints per Service everywhere in the benchmark.
pub const ENDPOINTS_PER_SERVICE: usize = 10;

#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub packet: PacketPlan,
    pub traffic: TrafficPlan,
    pub control: ControlPlan,
}

#[derive(Clone, Debug)]
pub struct PacketPlan {
    /// Numbers of Services in the table.
    pub sizes: Vec<usize>,
    /// Interleaved repetitions of every case.
    pub repetitions: usize,
    /// New-flow cases: distinct flows per repetition, one run each.
    pub flows_per_sample: usize,
    /// Repeated cases: the kernel's `repeat` per sample.
    pub repeat: u32,
}

#[derive(Clone, Debug)]
pub struct TrafficPlan {
    pub sizes: Vec<usize>,
    /// Measured runs per (layout, size, protocol).
    pub repetitions: usize,
    pub warmup: Duration,
    pub run_time: Duration,
    /// Upper bound on operations per run, whatever the time.
    pub max_ops: u64,
    pub backend_namespaces: usize,
    /// Pod addresses per backend namespace; all of them together are the
    /// endpoint pool every layout uses.
    pub addresses_per_backend: usize,
    /// At most this many Services are addressed, spread over the table.
    pub max_targets: usize,
}

#[derive(Clone, Debug)]
pub struct ControlPlan {
    /// Table sizes for agent start → programmed.
    pub startup_sizes: Vec<usize>,
    /// Table size for the one-endpoint-change latency.
    pub change_size: usize,
    pub changes: usize,
    /// Tables the agent is started with through the Kubernetes API source:
    /// start → programmed, peak RSS and watch event → map write at each.
    pub api_scales: Vec<ApiScale>,
}

/// One table served by the stand-in API server.
#[derive(Clone, Copy, Debug)]
pub struct ApiScale {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Endpoint changes timed after the start.
    pub changes: usize,
}

impl ApiScale {
    const fn new(services: usize, endpoints_per_service: usize, changes: usize) -> Self {
        Self { services, endpoints_per_service, changes }
    }
}

impl Plan {
    pub fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::Smoke => Plan {
                mode,
                packet: PacketPlan { sizes: vec![1, 100], repetitions: 1, flows_per_sample: 200, repeat: 10_000 },
                traffic: TrafficPlan {
                    sizes: vec![1],
                    repetitions: 1,
                    warmup: Duration::from_millis(100),
                    run_time: Duration::from_millis(400),
                    max_ops: 200_000,
                    backend_namespaces: 2,
                    addresses_per_backend: 5,
                    max_targets: 64,
                },
                control: ControlPlan {
                    startup_sizes: vec![100],
                    change_size: 100,
                    changes: 5,
                    api_scales: vec![ApiScale::new(100, ENDPOINTS_PER_SERVICE, 5)],
                },
            },
            Mode::Quick => Plan {
                mode,
                packet: PacketPlan {
                    sizes: vec![1, 1_000, 10_000],
                    repetitions: 5,
                    flows_per_sample: 1_000,
                    repeat: 200_000,
                },
                traffic: TrafficPlan {
                    sizes: vec![1, 1_000],
                    repetitions: 1,
                    warmup: Duration::from_millis(300),
                    run_time: Duration::from_secs(2),
                    max_ops: 2_000_000,
                    backend_namespaces: 4,
                    addresses_per_backend: 4,
                    max_targets: 1_000,
                },
                // The larger API scale points run only in the full run.
                control: ControlPlan {
                    startup_sizes: vec![1_000, 10_000],
                    change_size: 10_000,
                    changes: 30,
                    api_scales: vec![ApiScale::new(10_000, ENDPOINTS_PER_SERVICE, 30)],
                },
            },
            Mode::Full => Plan {
                mode,
                packet: PacketPlan {
                    sizes: vec![1, 1_000, 10_000, 100_000],
                    repetitions: 11,
                    flows_per_sample: 2_000,
                    repeat: 1_000_000,
                },
                traffic: TrafficPlan {
                    sizes: vec![1, 1_000, 10_000],
                    repetitions: 3,
                    warmup: Duration::from_millis(500),
                    run_time: Duration::from_secs(4),
                    max_ops: 10_000_000,
                    backend_namespaces: 4,
                    addresses_per_backend: 4,
                    max_targets: 1_000,
                },
                control: ControlPlan {
                    startup_sizes: vec![1_000, 10_000],
                    change_size: 10_000,
                    changes: 200,
                    api_scales: vec![
                        ApiScale::new(10_000, ENDPOINTS_PER_SERVICE, 200),
                        ApiScale::new(50_000, ENDPOINTS_PER_SERVICE, 200),
                        // 250,000 endpoints.
                        ApiScale::new(5_000, 50, 200),
                    ],
                },
            },
        }
    }
}
