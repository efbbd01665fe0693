/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The few libbpf conventions redirect.c needs, spelled out here so that building the program
 * needs only clang and the kernel UAPI headers (linux-libc-dev), not libbpf-dev.
 */
#ifndef NP_BPF_H
#define NP_BPF_H

#include <linux/types.h>
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))

/* BTF-defined maps: the loader (aya) reads the map shape from these BTF types. */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

/* Helper calls by their stable UAPI ids (include/uapi/linux/bpf.h, `___BPF_FUNC_MAPPER`). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) =
	(void *)BPF_FUNC_map_update_elem;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define np_htons(x) ((__be16)__builtin_bswap16(x))
#define np_ntohs(x) ((__u16)__builtin_bswap16(x))
#else
#define np_htons(x) ((__be16)(x))
#define np_ntohs(x) ((__u16)(x))
#endif

#endif /* NP_BPF_H */
