/* Everything bindgen binds: the DPDK headers we use plus our wrappers of their static-inline
 * fast path (bindgen cannot call a static inline function; these are real symbols). */
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_version.h>

uint16_t rtc_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t rtc_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts, uint16_t nb_pkts);
struct rte_mbuf *rtc_pktmbuf_alloc(struct rte_mempool *mp);
int rtc_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void rtc_pktmbuf_free(struct rte_mbuf *m);
uint8_t *rtc_pktmbuf_data(struct rte_mbuf *m);
uint16_t rtc_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t rtc_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t rtc_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t rtc_pktmbuf_room(const struct rte_mbuf *m);
void rtc_pktmbuf_set_len(struct rte_mbuf *m, uint16_t len);
uint64_t rtc_pktmbuf_ol_flags(const struct rte_mbuf *m);
int rtc_errno(void);
unsigned rtc_lcore_id(void);
uint64_t rtc_rdtsc(void);
uint64_t rtc_rss_ipv4_udp(void);
uint64_t rtc_tx_offload_ipv4_cksum(void);
uint64_t rtc_tx_offload_udp_cksum(void);
const char *rtc_version(void);
