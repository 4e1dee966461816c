//! NUMA placement through hwlocality over the system hwloc: memory a tile allocates after
//! pinning should come from its core's NUMA node. Linux's first-touch policy already does that
//! for pages a pinned thread touches first; binding makes it a rule (pages allocated elsewhere by
//! a library, or migrated, stay on the node), and it is checked at start rather than assumed.

use hwlocality::{
    Topology,
    bitmap::BitmapRef,
    memory::binding::{MemoryBindingFlags, MemoryBindingPolicy},
    memory::nodeset::NodeSet,
    object::types::ObjectType,
};

/// NUMA nodes of this host (1 on most VMs and single-socket machines).
pub fn numa_nodes() -> Result<usize, String> {
    let topology = Topology::new().map_err(|e| format!("hwloc topology: {e}"))?;
    Ok(topology.objects_with_type(ObjectType::NUMANode).count())
}

/// The NUMA node holding `core` (its OS index).
pub fn node_of_core(core: usize) -> Result<usize, String> {
    let topology = Topology::new().map_err(|e| format!("hwloc topology: {e}"))?;
    node_in(&topology, core)
}

fn node_in(topology: &Topology, core: usize) -> Result<usize, String> {
    nodeset_of(topology, core)?
        .first_set()
        .map(usize::from)
        .ok_or_else(|| format!("hwloc knows no NUMA node for core {core}"))
}

/// The NUMA nodes local to `core` (its OS index).
fn nodeset_of(topology: &Topology, core: usize) -> Result<BitmapRef<'_, NodeSet>, String> {
    topology
        .objects_with_type(ObjectType::PU)
        .find(|pu| pu.os_index() == Some(core))
        .ok_or_else(|| format!("core {core} is not in this host's topology"))?
        .nodeset()
        .ok_or_else(|| format!("hwloc knows no NUMA node for core {core}"))
}

/// Binds the memory the calling thread allocates from now on to the NUMA node of `core`. On a
/// host with one node there is nothing to choose: returns `Ok(None)` without a system call.
pub fn bind_thread_memory_to_core(core: usize) -> Result<Option<usize>, String> {
    let topology = Topology::new().map_err(|e| format!("hwloc topology: {e}"))?;
    if topology.objects_with_type(ObjectType::NUMANode).count() <= 1 {
        return Ok(None);
    }
    let node = node_in(&topology, core)?;
    let nodeset = nodeset_of(&topology, core)?;
    topology
        .bind_memory(
            nodeset,
            MemoryBindingPolicy::Bind,
            MemoryBindingFlags::THREAD | MemoryBindingFlags::STRICT,
        )
        .map_err(|e| format!("binding memory to NUMA node {node}: {e}"))?;
    Ok(Some(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_core_has_a_node_and_binding_is_safe_to_call() {
        let nodes = numa_nodes().expect("hwloc reads the topology");
        assert!(nodes >= 1);
        for core in crate::tile::allowed_cpus().expect("allowed cpus") {
            assert!(node_of_core(core).expect("node of an allowed core") < nodes.max(1) * 64);
            // One node: nothing to bind; several: the thread's policy now names one.
            let bound = std::thread::spawn(move || bind_thread_memory_to_core(core))
                .join()
                .unwrap()
                .expect("binding");
            assert_eq!(bound.is_some(), nodes > 1);
        }
        assert!(node_of_core(usize::MAX >> 1).is_err());
    }
}
