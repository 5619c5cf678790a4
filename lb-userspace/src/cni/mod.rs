//! `lb-cni`, the CNI plugin that serves pods through the datapath when lb
//! runs chained after another CNI plugin: ADD attaches lb-agent's pinned
//! program at ingress of the pod's node-side interface (see
//! `datapath::chained` for how the program and the links are shared),
//! DEL detaches it, CHECK verifies it, STATUS says whether an agent has
//! published its program, GC removes links of attachments gone.

pub mod host_side;
pub mod pin_name;
pub mod plugin;
pub mod protocol;
