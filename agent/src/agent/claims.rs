//! Checking what a CNI ADD claims before anything is registered or enrolled.
//!
//! The plugin reports a pod's name, UID, network namespace and addresses as the runtime gave them;
//! none of that is taken on trust. A claim must agree with the Pod object of the current snapshot
//! (`metadata.uid`, `spec.nodeName`, `status.podIPs`; an address the config gives to another pod is
//! never this one's) and must not take what another live pod of this node already holds (an
//! address, a network namespace, a kernel inbound entry). [`check`] is the pure decision over
//! facts the caller gathered ([`Facts`]); it does no I/O.
use std::net::IpAddr;

use crate::{cni::protocol::PodRef, config::model::PodEntry};

/// Why a claim was refused. Every message names the pod, the conflicting field and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "pod {pod}: K8S_POD_UID {claimed} is not the Pod object's metadata.uid {object} (a stale or \
         forged CNI call; the runtime retries with the current sandbox)"
    )]
    Uid { pod: String, claimed: String, object: String },
    #[error(
        "pod {pod}: the CNI call has no K8S_POD_UID but the Pod object's metadata.uid is {object}; \
         refusing a claim that does not name its pod instance (the runtime must pass K8S_POD_UID in \
         CNI_ARGS)"
    )]
    UidMissing { pod: String, object: String },
    #[error(
        "pod {pod}: its Pod object's spec.nodeName is {object}, not this node ({this_node}); only that \
         node's agent enrolls it"
    )]
    Node { pod: String, object: String, this_node: String },
    #[error(
        "pod {pod}: address {ip} is not one of its Pod object's status.podIPs ({object}); check the \
         primary CNI's result (prevResult.ips)"
    )]
    NotItsAddress { pod: String, ip: IpAddr, object: String },
    #[error(
        "pod {pod}: address {ip} belongs to pod {owner} (its status.podIPs in the mesh config); refusing \
         to take it over"
    )]
    AddressOfAnotherPod { pod: String, ip: IpAddr, owner: String },
    #[error(
        "pod {pod}: address {ip} is held by pod {owner}, registered on this node with a live network \
         namespace; refusing to take it over (remove that pod first)"
    )]
    AddressTaken { pod: String, ip: IpAddr, owner: String },
    #[error(
        "pod {pod}: the kernel's inbound entry for address {ip} belongs to enrolled pod {owner}; refusing \
         to overwrite it"
    )]
    KernelEntryTaken { pod: String, ip: IpAddr, owner: String },
    #[error(
        "pod {pod}: network namespace {netns} is already registered for pod {owner}; refusing to enroll \
         it under another pod's identity"
    )]
    NetnsTaken { pod: String, netns: String, owner: String },
    #[error(
        "pod {pod}: its registration key {key} (K8S_POD_UID, else the container ID) is already pod \
         {owner}'s; refusing to replace another pod's registration"
    )]
    KeyTaken { pod: String, key: String, owner: String },
}

impl ClaimError {
    /// The claimed field in conflict: the `reason` label of `sluice_cni_refusals_total` and the
    /// `conflict` of the CNI reply.
    pub fn field(&self) -> &'static str {
        match self {
            ClaimError::Uid { .. } | ClaimError::UidMissing { .. } => "uid",
            ClaimError::Node { .. } => "node",
            ClaimError::NotItsAddress { .. } | ClaimError::AddressOfAnotherPod { .. } => "ips",
            ClaimError::AddressTaken { .. } | ClaimError::KernelEntryTaken { .. } => "ips_taken",
            ClaimError::NetnsTaken { .. } => "netns",
            ClaimError::KeyTaken { .. } => "uid",
        }
    }
}

/// Another pod this node has registered, as far as a claim can conflict with it.
#[derive(Debug, Clone)]
pub struct Other {
    /// `namespace/name`.
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// Its network namespace still exists (a registration whose sandbox is gone holds nothing).
    pub live: bool,
    /// Its network namespace is the one the claim names (same nsfs inode, whatever the path).
    pub same_netns: bool,
}

/// What [`check`] decides on, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// This agent's node (`--node-name`).
    pub node: &'a str,
    /// The claimed pod's object in the current snapshot, if the config lists it.
    pub object: Option<&'a PodEntry>,
    /// For each claimed address the config gives to some pod: that pod (`namespace/name`).
    pub config_owners: Vec<(IpAddr, String)>,
    /// The other registrations of this node: every one except the claimed pod's own (same key or
    /// same pod) when its network namespace is the claim's or gone. A same-pod registration whose
    /// sandbox is live in another namespace stays: its addresses are not the claim's to take.
    pub others: Vec<Other>,
    /// The pod (`namespace/name`) registered under the claim's key ([`PodRef::key`]), if any: a
    /// re-ADD replaces that registration, so it must be the same pod's.
    pub key_owner: Option<String>,
    /// For each claimed address the kernel's inbound map holds: the enrolled pod owning the entry
    /// (`namespace/name`), or None when no enrolled pod has that netns cookie (stale state of a
    /// previous agent, which the new entry replaces).
    pub kernel_owners: Vec<(IpAddr, Option<String>)>,
    /// Whether an address of the object's `status.podIPs` is held by a live sandbox registered on
    /// this node (the pod's own included). When none is, the addresses are those of a sandbox that
    /// is gone: the kubelet keeps them in the status until the new sandbox, whose ADD this is,
    /// reports its own, so they cannot be compared with.
    pub object_ips_held: bool,
}

/// Checks a CNI ADD's claim; the first conflict found refuses it. What other pods hold is checked
/// first (that refusal names the owner), then the claim against the pod's own object.
pub fn check(claim: &PodRef, facts: &Facts<'_>) -> Result<(), ClaimError> {
    let pod = format!("{}/{}", claim.namespace, claim.name);
    if let Some(owner) = facts.key_owner.as_ref().filter(|o| **o != pod) {
        return Err(ClaimError::KeyTaken { pod, key: claim.key(), owner: owner.clone() });
    }
    if let Some((ip, owner)) =
        facts.config_owners.iter().find(|(ip, owner)| claim.ips.contains(ip) && *owner != pod)
    {
        return Err(ClaimError::AddressOfAnotherPod { pod, ip: *ip, owner: owner.clone() });
    }
    // Another pod's namespace first (whatever order the registrations come in): that is the
    // stronger conflict, and the one to name when the addresses are also held elsewhere.
    if let Some(other) = facts.others.iter().find(|o| o.live && o.same_netns) {
        return Err(ClaimError::NetnsTaken {
            pod,
            netns: claim.netns.display().to_string(),
            owner: other.name.clone(),
        });
    }
    for other in facts.others.iter().filter(|o| o.live) {
        if let Some(ip) = claim.ips.iter().find(|ip| other.ips.contains(ip)) {
            return Err(ClaimError::AddressTaken { pod, ip: *ip, owner: other.name.clone() });
        }
    }
    if let Some((ip, Some(owner))) = facts
        .kernel_owners
        .iter()
        .find(|(ip, owner)| claim.ips.contains(ip) && owner.as_ref().is_some_and(|o| *o != pod))
    {
        return Err(ClaimError::KernelEntryTaken { pod, ip: *ip, owner: owner.clone() });
    }
    if let Some(object) = facts.object {
        if let Some(uid) = object.uid.as_deref().filter(|u| !u.is_empty()) {
            if claim.uid.is_empty() {
                return Err(ClaimError::UidMissing { pod, object: uid.to_string() });
            }
            if claim.uid != uid {
                return Err(ClaimError::Uid { pod, claimed: claim.uid.clone(), object: uid.to_string() });
            }
        }
        if let Some(node) = object.node.as_deref()
            && node != facts.node
        {
            return Err(ClaimError::Node {
                pod,
                object: node.to_string(),
                this_node: facts.node.to_string(),
            });
        }
        // Before the kubelet has written status.podIPs (a real ADD comes first), or while they are
        // a gone sandbox's, there is nothing to compare with; the ownership checks above still apply.
        if !object.ips.is_empty()
            && facts.object_ips_held
            && let Some(ip) = claim.ips.iter().find(|ip| !object.ips.contains(ip))
        {
            let object = object.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            return Err(ClaimError::NotItsAddress { pod, ip: *ip, object });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn claim(name: &str, ips: &[&str]) -> PodRef {
        PodRef {
            namespace: "mesh".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            container_id: format!("c-{name}"),
            netns: format!("/var/run/netns/{name}").into(),
            ips: ips.iter().map(|s| ip(s)).collect(),
        }
    }

    fn object(name: &str, ips: &[&str]) -> PodEntry {
        PodEntry {
            namespace: "mesh".into(),
            name: name.into(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            node: Some("node1".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    fn other(name: &str, ips: &[&str], live: bool, same_netns: bool) -> Other {
        Other { name: name.into(), ips: ips.iter().map(|s| ip(s)).collect(), live, same_netns }
    }

    /// (row, claim, facts, the field refused or None when accepted, text the message must hold)
    #[test]
    fn claims_are_checked_against_the_pod_object_and_what_others_hold() {
        let evil = object("evil", &["10.0.0.9"]);
        let a = object("a", &["10.0.0.1", "fd00::1"]);
        let unassigned = object("a", &[]);
        let no_uid = PodEntry { uid: None, ..object("a", &["10.0.0.1"]) };
        let elsewhere = PodEntry { node: Some("node2".into()), ..object("a", &["10.0.0.1"]) };
        fn base(o: &PodEntry) -> Facts<'_> {
            Facts { node: "node1", object: Some(o), object_ips_held: true, ..Default::default() }
        }
        type Row<'a> = (&'a str, PodRef, Facts<'a>, Option<&'a str>, &'a str);
        let rows: Vec<Row<'_>> = vec![
            ("its own addresses", claim("a", &["10.0.0.1", "fd00::1"]), base(&a), None, ""),
            ("one family only", claim("a", &["10.0.0.1"]), base(&a), None, ""),
            (
                "a re-ADD of its own registration",
                claim("a", &["10.0.0.1"]),
                Facts { key_owner: Some("mesh/a".into()), ..base(&a) },
                None,
                "",
            ),
            (
                "another pod's UID (its registration key)",
                PodRef { uid: "uid-victim".into(), ..claim("a", &["10.0.0.1"]) },
                Facts { key_owner: Some("mesh/victim".into()), ..base(&a) },
                Some("uid"),
                "registration key uid-victim",
            ),
            (
                "a recreated sandbox: status.podIPs still the gone sandbox's",
                claim("a", &["10.0.0.5"]),
                Facts { object_ips_held: false, ..base(&a) },
                None,
                "",
            ),
            (
                "another pod's address, not in its object",
                claim("evil", &["10.0.0.1"]),
                base(&evil),
                Some("ips"),
                "status.podIPs (10.0.0.9)",
            ),
            (
                "forged uid",
                PodRef { uid: "uid-other".into(), ..claim("a", &["10.0.0.1"]) },
                base(&a),
                Some("uid"),
                "metadata.uid uid-a",
            ),
            (
                "no uid from the runtime while the object has one",
                PodRef { uid: String::new(), ..claim("a", &["10.0.0.1"]) },
                base(&a),
                Some("uid"),
                "no K8S_POD_UID but the Pod object's metadata.uid is uid-a",
            ),
            (
                "no uid from the runtime, none in the object",
                PodRef { uid: String::new(), ..claim("a", &["10.0.0.1"]) },
                base(&no_uid),
                None,
                "",
            ),
            ("a pod of another node", claim("a", &["10.0.0.1"]), base(&elsewhere), Some("node"), "node2"),
            (
                "object without addresses yet: an address the config gives another pod",
                claim("a", &["10.0.0.7"]),
                Facts { config_owners: vec![(ip("10.0.0.7"), "plain/b".into())], ..base(&unassigned) },
                Some("ips"),
                "belongs to pod plain/b",
            ),
            (
                "object without addresses yet: a fresh address",
                claim("a", &["10.0.0.7"]),
                Facts { config_owners: vec![], ..base(&unassigned) },
                None,
                "",
            ),
            (
                "its own address in the config",
                claim("a", &["10.0.0.1"]),
                Facts { config_owners: vec![(ip("10.0.0.1"), "mesh/a".into())], ..base(&a) },
                None,
                "",
            ),
            (
                "another live pod's network namespace",
                claim("a", &["10.0.0.1"]),
                Facts { others: vec![other("plain/b", &["10.0.0.2"], true, true)], ..base(&a) },
                Some("netns"),
                "already registered for pod plain/b",
            ),
            (
                "an address another live pod holds",
                claim("x", &["10.0.0.2"]),
                Facts {
                    node: "node1",
                    object: None,
                    others: vec![other("mesh/victim", &["10.0.0.2"], true, false)],
                    ..Default::default()
                },
                Some("ips_taken"),
                "held by pod mesh/victim",
            ),
            (
                "a pod whose sandbox is gone holds nothing",
                claim("a", &["10.0.0.1"]),
                Facts { others: vec![other("mesh/old", &["10.0.0.1"], false, true)], ..base(&a) },
                None,
                "",
            ),
            (
                "a kernel entry of another enrolled pod",
                claim("a", &["10.0.0.1"]),
                Facts { kernel_owners: vec![(ip("10.0.0.1"), Some("mesh/victim".into()))], ..base(&a) },
                Some("ips_taken"),
                "inbound entry for address 10.0.0.1 belongs to enrolled pod mesh/victim",
            ),
            (
                "its own kernel entry (a retried ADD)",
                claim("a", &["10.0.0.1"]),
                Facts { kernel_owners: vec![(ip("10.0.0.1"), Some("mesh/a".into()))], ..base(&a) },
                None,
                "",
            ),
            (
                "a stale kernel entry no enrolled pod owns",
                claim("a", &["10.0.0.1"]),
                Facts { kernel_owners: vec![(ip("10.0.0.1"), None)], ..base(&a) },
                None,
                "",
            ),
        ];
        for (row, c, facts, want, text) in rows {
            let got = check(&c, &facts);
            match want {
                None => assert_eq!(got, Ok(()), "{row}"),
                Some(field) => {
                    let e = got.expect_err(row);
                    assert_eq!(e.field(), field, "{row}: {e}");
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("pod mesh/{}", c.name)), "{row}: names the pod: {msg}");
                    assert!(msg.contains(text), "{row}: {msg}");
                }
            }
        }
    }

    #[test]
    fn a_second_registration_of_a_live_enrolled_pod_from_another_netns_is_refused() {
        // Facts as Pods::claim_facts builds them while mesh/a (uid-a, 10.0.0.1) is registered,
        // enrolled and live in its own netns: the kernel entry's and the config's owner are mesh/a.
        let a = object("a", &["10.0.0.1"]);
        let facts = Facts {
            node: "node1",
            object: Some(&a),
            config_owners: vec![(ip("10.0.0.1"), "mesh/a".into())],
            others: vec![other("mesh/a", &["10.0.0.1"], true, false)],
            key_owner: Some("mesh/a".into()),
            kernel_owners: vec![(ip("10.0.0.1"), Some("mesh/a".into()))],
            object_ips_held: true,
        };
        let forged = |uid: &str| PodRef {
            uid: uid.into(),
            container_id: "forged".into(),
            netns: "/var/run/netns/evil".into(),
            ..claim("a", &["10.0.0.1"])
        };
        // Without a UID: refused whatever the rest says, naming the pod and the field.
        let no_uid = Facts { others: vec![], key_owner: None, ..facts.clone() };
        let e = check(&forged(""), &no_uid).expect_err("a claim without K8S_POD_UID");
        assert_eq!(e.field(), "uid");
        assert!(e.to_string().contains("pod mesh/a") && e.to_string().contains("K8S_POD_UID"), "{e}");
        // With the (public) UID: the live registration in another netns holds the address.
        let e = check(&forged("uid-a"), &facts).expect_err("the address is held by a live netns");
        assert_eq!(
            e,
            ClaimError::AddressTaken { pod: "mesh/a".into(), ip: ip("10.0.0.1"), owner: "mesh/a".into() }
        );
        // The legitimate re-creation: the old sandbox's netns is gone, so it holds nothing.
        let recreated = Facts { others: vec![other("mesh/a", &["10.0.0.1"], false, false)], ..facts.clone() };
        assert_eq!(check(&forged("uid-a"), &recreated), Ok(()));
    }
}
