/* Real symbols for DPDK's static-inline fast path, so Rust can call it. Each is a one-line
 * forward; the compiler inlines the DPDK body here, so the cost is one call. */
#include "wrapper.h"

uint16_t rtc_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t rtc_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *rtc_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

int rtc_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void rtc_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
uint8_t *rtc_pktmbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t rtc_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint32_t rtc_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
uint16_t rtc_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

/* Bytes available from the data start to the end of the buffer (headroom is kept). */
uint16_t rtc_pktmbuf_room(const struct rte_mbuf *m) { return (uint16_t)(m->buf_len - m->data_off); }

void rtc_pktmbuf_set_len(struct rte_mbuf *m, uint16_t len)
{
	m->data_len = len;
	m->pkt_len = len;
}

uint64_t rtc_pktmbuf_ol_flags(const struct rte_mbuf *m) { return m->ol_flags; }
int rtc_errno(void) { return rte_errno; }
unsigned rtc_lcore_id(void) { return rte_lcore_id(); }
uint64_t rtc_rdtsc(void) { return rte_rdtsc(); }
uint64_t rtc_rss_ipv4_udp(void) { return RTE_ETH_RSS_NONFRAG_IPV4_UDP; }
uint64_t rtc_tx_offload_ipv4_cksum(void) { return RTE_ETH_TX_OFFLOAD_IPV4_CKSUM; }
uint64_t rtc_tx_offload_udp_cksum(void) { return RTE_ETH_TX_OFFLOAD_UDP_CKSUM; }
const char *rtc_version(void) { return rte_version(); }
