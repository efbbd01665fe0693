//! The raw `bpf(2)` calls aya 0.14 lacks: every `unsafe` of this crate's fast path is here.
//!
//! - the flow table's batch operations ([`crate::flows::FlowTable`]): callers pass the file
//!   descriptor of a map whose key and value sizes they checked ([`map_info`]) to be those of
//!   [`FlowKey`] and [`FlowAction`], so the kernel reads and writes exactly the slices given;
//! - tcx links of the TC program ([`crate::fastpath::FastPath`]): created with the link's file
//!   descriptor in our hands, so that a detach is a `BPF_LINK_DETACH`, effective at once even
//!   if a forked child still holds a copy of the descriptor.
#![expect(
    unsafe_code,
    reason = "bpf(2) has no safe wrapper for these commands in aya 0.14"
)]

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use crate::flows::{FlowAction, FlowKey};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;
/// `enum bpf_attach_type`: BPF_TCX_INGRESS.
const BPF_TCX_INGRESS: u32 = 46;

/// `bpf_attr` of BPF_LINK_CREATE for a tcx link.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// `bpf_attr` of BPF_LINK_DETACH.
#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// `bpf_attr` of the element calls.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64, // next_key for BPF_MAP_GET_NEXT_KEY
    flags: u64,
}

/// `bpf_attr` of the batch calls.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `bpf_attr` of BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info` (the kernel fills `info_len` bytes).
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Attaches the TC program `prog` to the ingress of `ifindex` as a tcx link (the last of the
/// interface's tcx programs); the link's file descriptor (close-on-exec).
pub(crate) fn tcx_ingress_link(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        ..LinkCreateAttr::default()
    };
    // SAFETY: BPF_LINK_CREATE reads the attr only; it returns a new descriptor or fails.
    let fd = unsafe { sys_bpf_ret(BPF_LINK_CREATE, &mut attr) }?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link `link` from its hook at once (the link stays a valid, defunct object
/// until its last descriptor closes).
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    // SAFETY: BPF_LINK_DETACH reads the attr only.
    unsafe { sys_bpf(BPF_LINK_DETACH, &mut attr) }
}

/// `bpf(cmd, attr)` returning its non-negative result (a new descriptor).
///
/// # Safety
/// As [`sys_bpf`].
unsafe fn sys_bpf_ret<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i32> {
    // SAFETY: per the caller's contract; the size passed is the struct's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// `bpf(cmd, attr)`.
///
/// # Safety
/// `attr` is the `bpf_attr` variant of `cmd`; every pointer in it is valid for what the kernel
/// reads or writes through it.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: per the caller's contract.
    unsafe { sys_bpf_ret(cmd, attr) }.map(|_| ())
}

/// (key size, value size, max entries) of the map `fd`.
pub(crate) fn map_info(fd: u32) -> io::Result<(u32, u32, u32)> {
    let mut info = MapInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd,
        info_len: mem::size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes into `info`.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok((info.key_size, info.value_size, info.max_entries))
}

/// BPF_MAP_UPDATE_BATCH of `keys[i] -> values[i]` (equal lengths): how many went in before
/// the first failure, and the failure.
pub(crate) fn update_batch(
    fd: u32,
    keys: &[FlowKey],
    values: &[FlowAction],
) -> (usize, io::Result<()>) {
    let count = keys.len().min(values.len());
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: count as u32,
        map_fd: fd,
        ..BatchAttr::default()
    };
    // SAFETY: the kernel reads `count` keys and values of the map's sizes (the caller's
    // contract) from the slices, which hold at least that many.
    let r = unsafe { sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr) };
    ((attr.count as usize).min(count), r)
}

/// BPF_MAP_DELETE_BATCH of `keys`: how many were deleted before the first failure (ENOENT: an
/// absent key), and the failure.
pub(crate) fn delete_batch(fd: u32, keys: &[FlowKey]) -> (usize, io::Result<()>) {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd,
        ..BatchAttr::default()
    };
    // SAFETY: the kernel reads `count` keys of the map's key size from the slice.
    let r = unsafe { sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
    ((attr.count as usize).min(keys.len()), r)
}

/// BPF_MAP_LOOKUP_AND_DELETE_BATCH into `keys`/`values`, from the start of the map (`from`
/// None) or from where the previous call stopped (its `next`): how many entries were returned
/// (and deleted), and the failure (ENOENT: nothing after them).
pub(crate) fn take_batch(
    fd: u32,
    from: Option<&u64>,
    next: &mut u64,
    keys: &mut [FlowKey],
    values: &mut [FlowAction],
) -> (usize, io::Result<()>) {
    let count = keys.len().min(values.len());
    let mut attr = BatchAttr {
        // Hash maps use a u32 bucket index as the batch token.
        in_batch: from.map_or(0, |t| t as *const u64 as u64),
        out_batch: next as *mut u64 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: count as u32,
        map_fd: fd,
        ..BatchAttr::default()
    };
    // SAFETY: the kernel writes at most `count` keys and values of the map's sizes into the
    // slices, reads a token of the map's batch size (4 bytes for hash maps) from `from` and
    // writes one into `next`.
    let r = unsafe { sys_bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) };
    ((attr.count as usize).min(count), r)
}

/// BPF_MAP_LOOKUP_ELEM of `key` into `value`.
pub(crate) fn lookup(fd: u32, key: &FlowKey, value: &mut FlowAction) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd,
        key: key as *const FlowKey as u64,
        value: value as *mut FlowAction as u64,
        ..ElemAttr::default()
    };
    // SAFETY: the kernel reads one key from `key` and writes one value into `value`.
    unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }
}

/// BPF_MAP_GET_NEXT_KEY: the key after `key` (the first one for `None`) into `next`.
pub(crate) fn next_key(fd: u32, key: Option<&FlowKey>, next: &mut FlowKey) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd,
        key: key.map_or(0, |k| k as *const FlowKey as u64),
        value: next as *mut FlowKey as u64,
        ..ElemAttr::default()
    };
    // SAFETY: the kernel reads one key from `key` (if any) and writes one into `next`.
    unsafe { sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) }
}
