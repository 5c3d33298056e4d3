//! Just enough of the nf_tables netlink protocol to create, look up and delete one table of
//! our own: message and attribute encoding, batches, and the kernel's answers.
//!
//! Constants are those of `linux/netfilter/nf_tables.h` and `nfnetlink.h`. Integer attributes
//! are big-endian; register data is raw bytes as they appear in the packet (or, for conntrack
//! status, in host order, as the kernel keeps it).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

// nfnetlink
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

// netlink
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_ECHO: u16 = 8;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;

/// The IPv4 family (`NFPROTO_IPV4`).
pub const NFPROTO_IPV4: u8 = 2;
/// The IPv6 family (`NFPROTO_IPV6`).
pub const NFPROTO_IPV6: u8 = 10;

// attributes
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_HANDLE: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NF_ACCEPT: u32 = 1;

/// A netfilter hook of the IPv4 and IPv6 families (the same numbers in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `NF_INET_PRE_ROUTING`.
    Prerouting = 0,
    /// `NF_INET_LOCAL_IN`.
    Input = 1,
    /// `NF_INET_FORWARD`.
    Forward = 2,
}

/// Appends attributes to a message under construction.
#[derive(Debug, Default, Clone)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        self.put(ty, &strz(s))
    }

    fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    fn be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::default();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.0)
    }
}

fn strz(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One expression of a rule, by name with its attributes (`nft --debug=netlink` shows the
/// same steps).
#[derive(Debug, Clone)]
pub struct Expr {
    name: &'static str,
    data: Attrs,
}

/// Register numbers: 0 is the verdict register, 1.. are 16-byte data registers.
const REG_VERDICT: u32 = 0;
/// First data register.
pub const REG_1: u32 = 1;
/// Second data register.
pub const REG_2: u32 = 2;

impl Expr {
    fn new(name: &'static str, f: impl FnOnce(&mut Attrs)) -> Expr {
        let mut data = Attrs::default();
        f(&mut data);
        Expr { name, data }
    }

    /// `meta load iifname => reg 1`.
    pub fn meta_iifname() -> Expr {
        Expr::new("meta", |a| {
            a.be32(1, REG_1).be32(2, 6); // NFTA_META_DREG, NFTA_META_KEY = NFT_META_IIFNAME
        })
    }

    /// `meta load l4proto => reg 1`.
    pub fn meta_l4proto() -> Expr {
        Expr::new("meta", |a| {
            a.be32(1, REG_1).be32(2, 16); // NFT_META_L4PROTO
        })
    }

    /// `payload load LEN @ network header + OFFSET => reg 1`.
    pub fn payload_network(offset: u32, len: u32) -> Expr {
        Expr::payload(1, offset, len)
    }

    /// `payload load LEN @ transport header + OFFSET => reg 1`.
    pub fn payload_transport(offset: u32, len: u32) -> Expr {
        Expr::payload(2, offset, len)
    }

    fn payload(base: u32, offset: u32, len: u32) -> Expr {
        Expr::new("payload", |a| {
            // NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
            a.be32(1, REG_1).be32(2, base).be32(3, offset).be32(4, len);
        })
    }

    /// `cmp eq reg 1 DATA` (a shorter `data` than the register compares a prefix).
    pub fn cmp_eq(data: &[u8]) -> Expr {
        Expr::cmp(0, data)
    }

    /// `cmp neq reg 1 DATA`.
    pub fn cmp_neq(data: &[u8]) -> Expr {
        Expr::cmp(1, data)
    }

    fn cmp(op: u32, data: &[u8]) -> Expr {
        Expr::new("cmp", |a| {
            // NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA
            a.be32(1, REG_1).be32(2, op).nest(3, |d| {
                d.put(NFTA_DATA_VALUE, data);
            });
        })
    }

    /// `ct load direction => reg 1`.
    pub fn ct_direction() -> Expr {
        Expr::new("ct", |a| {
            a.be32(1, REG_1).be32(2, 1); // NFTA_CT_DREG, NFTA_CT_KEY = NFT_CT_DIRECTION
        })
    }

    /// `ct load status => reg 1`.
    pub fn ct_status() -> Expr {
        Expr::new("ct", |a| {
            a.be32(1, REG_1).be32(2, 2); // NFTA_CT_DREG, NFTA_CT_KEY = NFT_CT_STATUS
        })
    }

    /// `bitwise reg 1 = (reg 1 & MASK) ^ 0` over 4 bytes.
    pub fn and_mask(mask: [u8; 4]) -> Expr {
        Expr::new("bitwise", |a| {
            // NFTA_BITWISE_SREG, _DREG, _LEN, _MASK, _XOR
            a.be32(1, REG_1).be32(2, REG_1).be32(3, 4);
            a.nest(4, |d| {
                d.put(NFTA_DATA_VALUE, &mask);
            });
            a.nest(5, |d| {
                d.put(NFTA_DATA_VALUE, &[0; 4]);
            });
        })
    }

    /// `immediate reg N DATA`.
    pub fn immediate(reg: u32, data: &[u8]) -> Expr {
        Expr::new("immediate", |a| {
            a.be32(1, reg).nest(2, |d| {
                d.put(NFTA_DATA_VALUE, data);
            });
        })
    }

    /// `immediate reg 0 accept`.
    pub fn accept() -> Expr {
        Expr::new("immediate", |a| {
            a.be32(1, REG_VERDICT).nest(2, |d| {
                d.nest(NFTA_DATA_VERDICT, |v| {
                    v.be32(NFTA_VERDICT_CODE, NF_ACCEPT);
                });
            });
        })
    }

    /// `counter`.
    pub fn counter() -> Expr {
        Expr::new("counter", |a| {
            a.be64(1, 0).be64(2, 0); // NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS
        })
    }

    /// `redir proto_min reg N flags proto-specified`: to the port in `reg`, on the address of
    /// the interface the packet came in on.
    pub fn redirect_port(reg: u32) -> Expr {
        Expr::new("redir", |a| {
            // NFTA_REDIR_REG_PROTO_MIN, NFTA_REDIR_FLAGS = NF_NAT_RANGE_PROTO_SPECIFIED
            a.be32(1, reg).be32(3, 2);
        })
    }

    /// `nat dnat ip addr_min reg A proto_min reg P flags proto-specified`.
    pub fn dnat_ipv4(addr_reg: u32, port_reg: u32) -> Expr {
        Expr::new("nat", |a| {
            // NFTA_NAT_TYPE = NFT_NAT_DNAT, _FAMILY, _REG_ADDR_MIN, _REG_PROTO_MIN, _FLAGS
            a.be32(1, 1)
                .be32(2, u32::from(NFPROTO_IPV4))
                .be32(3, addr_reg)
                .be32(5, port_reg)
                .be32(7, 2);
        })
    }

    /// `reject with tcp reset`.
    pub fn reject_tcp_reset() -> Expr {
        Expr::new("reject", |a| {
            a.be32(1, 1).put(2, &[0]); // NFTA_REJECT_TYPE = NFT_REJECT_TCP_RST, _ICMP_CODE
        })
    }
}

/// One message of a batch.
#[derive(Debug, Clone)]
pub struct Message {
    ty: u16,
    flags: u16,
    family: u8,
    attrs: Attrs,
}

impl Message {
    fn nft(msg: u16, flags: u16, family: u8, attrs: Attrs) -> Message {
        Message {
            ty: (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags: NLM_F_REQUEST | NLM_F_ACK | flags,
            family,
            attrs,
        }
    }

    /// `add table FAMILY NAME` (no error if it exists).
    pub fn new_table(family: u8, name: &str) -> Message {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, name).be32(NFTA_TABLE_FLAGS, 0);
        Message::nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, a)
    }

    /// `create table FAMILY NAME`: an error if it exists.
    pub fn create_table(family: u8, name: &str) -> Message {
        let mut m = Message::new_table(family, name);
        m.flags |= NLM_F_EXCL;
        m
    }

    /// Asks the kernel to send back what this message created (with its handle): see
    /// [`Echo`].
    pub fn echo(mut self) -> Message {
        self.flags |= NLM_F_ECHO;
        self
    }

    /// `delete table FAMILY NAME`; with `handle`, only that instance (the kernel then goes by
    /// the handle alone, and handles are never reused).
    pub fn del_table(family: u8, name: &str, handle: Option<u64>) -> Message {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, name);
        if let Some(h) = handle {
            a.be64(NFTA_TABLE_HANDLE, h);
        }
        Message::nft(NFT_MSG_DELTABLE, 0, family, a)
    }

    /// `add chain FAMILY TABLE NAME { type TYPE hook HOOK priority PRIORITY; policy accept; }`.
    pub fn new_base_chain(
        family: u8,
        table: &str,
        name: &str,
        chain_type: &str,
        hook: Hook,
        priority: i32,
    ) -> Message {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, table)
            .str(NFTA_CHAIN_NAME, name)
            .nest(NFTA_CHAIN_HOOK, |h| {
                h.be32(NFTA_HOOK_HOOKNUM, hook as u32)
                    .be32(NFTA_HOOK_PRIORITY, priority as u32);
            })
            .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
            .str(NFTA_CHAIN_TYPE, chain_type);
        Message::nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, family, a)
    }

    /// `add rule FAMILY TABLE CHAIN EXPRS` (appended).
    pub fn new_rule(family: u8, table: &str, chain: &str, exprs: &[Expr]) -> Message {
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, table)
            .str(NFTA_RULE_CHAIN, chain)
            .nest(NFTA_RULE_EXPRESSIONS, |list| {
                for e in exprs {
                    list.nest(NFTA_LIST_ELEM, |elem| {
                        elem.str(NFTA_EXPR_NAME, e.name);
                        elem.nest(NFTA_EXPR_DATA, |d| d.0.extend_from_slice(&e.data.0));
                    });
                }
            });
        Message::nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, a)
    }

    fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        encode(out, self.ty, self.flags, seq, self.family, 0, &self.attrs.0);
    }
}

fn encode(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, a: &[u8]) {
    let len = NLMSG_HDRLEN + 4 + a.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(a);
}

/// A netlink error from the kernel, with the step that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    /// What was being done.
    pub what: String,
    /// The kernel's (or the socket's) error.
    #[source]
    pub source: io::Error,
}

impl NetlinkError {
    /// The errno, when the kernel gave one.
    pub fn errno(&self) -> Option<Errno> {
        self.source.raw_os_error().map(Errno::from_raw)
    }
}

fn err(what: impl Into<String>, e: impl Into<io::Error>) -> NetlinkError {
    NetlinkError {
        what: what.into(),
        source: e.into(),
    }
}

/// A netfilter netlink socket.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

/// Socket receive buffer, bytes.
const RECEIVE_BUFFER: usize = 1 << 20;
/// How long to wait for the kernel's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl Socket {
    /// Opens a `NETLINK_NETFILTER` socket.
    pub fn open() -> Result<Socket, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| err("open a netfilter netlink socket", e))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| err("bind the netfilter netlink socket", e))?;
        // Room for one ack per message of a large batch (the kernel drops what does not fit).
        if setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER);
        }
        let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| err("set the netlink receive timeout", e))?;
        // Sequence numbers only need to differ between requests of this socket.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket { fd, seq })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `messages` as one atomic batch: all of them take effect, or none. Returns what
    /// the kernel echoed for messages marked with [`Message::echo`].
    pub fn batch(&mut self, what: &str, messages: &[Message]) -> Result<Vec<Echo>, NetlinkError> {
        let mut buf = Vec::with_capacity(4096);
        let begin = self.next_seq();
        encode(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let seq = self.next_seq();
            m.encode(seq, &mut buf);
            pending.push(seq);
        }
        let end = self.next_seq();
        encode(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        send(self.fd.as_raw_fd(), &buf, MsgFlags::empty()).map_err(|e| err(what, e))?;
        // One answer per message (an ack, or the error of a message that failed; the kernel
        // reports every message of an aborted batch). An error on the batch's own begin or end
        // message (no CAP_NET_ADMIN, a failed commit) is the whole batch's, and comes first.
        let mut first_error: Option<(u32, i32)> = None;
        let mut echoes = Vec::new();
        let mut answered = 0;
        while answered < pending.len() {
            let answers = match self.receive() {
                Ok(a) => a,
                Err(_) if first_error.is_some() => break,
                Err(e) => return Err(err(what, e)),
            };
            for answer in answers {
                match answer {
                    Answer::Ack { seq, errno } if errno != 0 && (seq == begin || seq == end) => {
                        return Err(err(what, io::Error::from_raw_os_error(errno)));
                    }
                    Answer::Ack { seq, errno } if pending.contains(&seq) => {
                        answered += 1;
                        if errno != 0 && first_error.is_none() {
                            first_error = Some((seq, errno));
                        }
                    }
                    Answer::Data { seq, ty, attrs } => {
                        if let Some(message) = pending.iter().position(|s| *s == seq) {
                            echoes.push(Echo { message, ty, attrs });
                        }
                    }
                    _ => {}
                }
            }
        }
        match first_error {
            None => Ok(echoes),
            Some((seq, errno)) => {
                let index = pending.iter().position(|s| *s == seq).unwrap_or(0);
                Err(err(
                    format!("{what} (message {} of {})", index + 1, pending.len()),
                    io::Error::from_raw_os_error(errno),
                ))
            }
        }
    }

    /// The handle of table `name`, `None` if there is no such table.
    pub fn table_handle(&mut self, family: u8, name: &str) -> Result<Option<u64>, NetlinkError> {
        let what = format!("look up table {name}");
        let seq = self.next_seq();
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, name);
        let mut buf = Vec::new();
        encode(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
            &a.0,
        );
        send(self.fd.as_raw_fd(), &buf, MsgFlags::empty()).map_err(|e| err(&what, e))?;
        let mut handle = None;
        loop {
            for answer in self.receive().map_err(|e| err(&what, e))? {
                match answer {
                    Answer::Data { seq: s, ty, attrs }
                        if s == seq && ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE =>
                    {
                        handle = find_attr(&attrs, NFTA_TABLE_HANDLE)
                            .and_then(|v| <[u8; 8]>::try_from(v).ok())
                            .map(u64::from_be_bytes);
                    }
                    Answer::Ack { seq: s, errno } if s == seq => {
                        return match errno {
                            0 => Ok(handle),
                            e if e == Errno::ENOENT as i32 => Ok(None),
                            e => Err(err(what, io::Error::from_raw_os_error(e))),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// How many rules table `name` holds, `None` if there is no such table.
    pub fn rule_count(&mut self, family: u8, name: &str) -> Result<Option<usize>, NetlinkError> {
        let what = format!("list the rules of table {name}");
        let seq = self.next_seq();
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, name);
        let mut buf = Vec::new();
        encode(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
            &a.0,
        );
        send(self.fd.as_raw_fd(), &buf, MsgFlags::empty()).map_err(|e| err(&what, e))?;
        let mut count = 0;
        loop {
            for answer in self.receive().map_err(|e| err(&what, e))? {
                match answer {
                    // The kernel filters by table; check anyway.
                    Answer::Data { seq: s, ty, attrs }
                        if s == seq
                            && ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE
                            && find_attr(&attrs, NFTA_RULE_TABLE) == Some(&strz(name)[..]) =>
                    {
                        count += 1;
                    }
                    Answer::Done { seq: s } if s == seq => return Ok(Some(count)),
                    Answer::Ack { seq: s, errno } if s == seq => {
                        return match errno {
                            e if e == Errno::ENOENT as i32 => Ok(None),
                            0 => Ok(Some(count)),
                            e => Err(err(what, io::Error::from_raw_os_error(e))),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    fn receive(&mut self) -> io::Result<Vec<Answer>> {
        let mut buf = vec![0u8; 65536];
        let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| {
            if e == Errno::EAGAIN {
                io::Error::new(io::ErrorKind::TimedOut, "the kernel did not answer")
            } else {
                io::Error::from(e)
            }
        })?;
        Ok(parse_answers(&buf[..n]))
    }
}

/// What the kernel sent back for a message of a batch sent with [`Message::echo`].
#[derive(Debug, Clone)]
pub struct Echo {
    /// The message's index in the batch.
    pub message: usize,
    ty: u16,
    attrs: Vec<u8>,
}

impl Echo {
    /// The handle of the table this echo describes, if it describes a table.
    pub fn table_handle(&self) -> Option<u64> {
        if self.ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
            return None;
        }
        find_attr(&self.attrs, NFTA_TABLE_HANDLE)
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map(u64::from_be_bytes)
    }
}

/// What the kernel sent back.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// `NLMSG_ERROR`: 0 is an ack, otherwise a positive errno.
    Ack { seq: u32, errno: i32 },
    /// A data message (its attributes after the nfgenmsg header).
    Data { seq: u32, ty: u16, attrs: Vec<u8> },
    /// `NLMSG_DONE`: the end of a dump.
    Done { seq: u32 },
}

fn parse_answers(mut buf: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        let body = &buf[NLMSG_HDRLEN..len];
        match ty {
            NLMSG_ERROR if body.len() >= 4 => {
                let code = i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes"));
                out.push(Answer::Ack {
                    seq,
                    errno: code.saturating_neg(),
                });
            }
            NLMSG_DONE => out.push(Answer::Done { seq }),
            NLMSG_ERROR => {}
            _ if body.len() >= 4 => out.push(Answer::Data {
                seq,
                ty,
                attrs: body[4..].to_vec(),
            }),
            _ => {}
        }
        let advance = (len + 3) & !3;
        buf = &buf[advance.min(buf.len())..];
    }
    out
}

/// The payload of the first attribute of type `ty` at this level.
fn find_attr(mut attrs: &[u8], ty: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let t = u16::from_ne_bytes([attrs[2], attrs[3]]) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if t == ty {
            return Some(&attrs[4..len]);
        }
        let advance = (len + 3) & !3;
        attrs = &attrs[advance.min(attrs.len())..];
    }
    None
}

/// The attributes at one level, as `(type without the nested flag, payload)`.
#[cfg(test)]
fn attrs_of(mut attrs: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let t = u16::from_ne_bytes([attrs[2], attrs[3]]) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            break;
        }
        out.push((t, &attrs[4..len]));
        let advance = (len + 3) & !3;
        attrs = &attrs[advance.min(attrs.len())..];
    }
    out
}

#[cfg(test)]
impl Message {
    /// The message decoded back, in a compact `nft`-like form, for tests of what a batch
    /// asks of the kernel: `create table 10 metadataproxy`, `add chain 10 metadataproxy input
    /// filter hook 1 priority -10`, `add rule 10 metadataproxy input: meta 1 6 | cmp 0
    /// 646f636b65723000 | ...` (each expression by name, then its attributes in order: numbers
    /// in decimal, data in hex).
    pub(crate) fn render(&self) -> String {
        fn text(v: &[u8]) -> String {
            String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned()
        }
        fn be32(v: &[u8]) -> u32 {
            u32::from_be_bytes(v.try_into().expect("4 bytes"))
        }
        fn hex(v: &[u8]) -> String {
            v.iter().map(|b| format!("{b:02x}")).collect()
        }
        let a = attrs_of(&self.attrs.0);
        let get = |ty| find_attr(&self.attrs.0, ty).unwrap_or_default();
        let f = self.family;
        match self.ty & 0xff {
            NFT_MSG_NEWTABLE if self.flags & NLM_F_EXCL != 0 => {
                format!("create table {f} {}", text(get(NFTA_TABLE_NAME)))
            }
            NFT_MSG_NEWTABLE => format!("add table {f} {}", text(get(NFTA_TABLE_NAME))),
            NFT_MSG_DELTABLE => {
                let handle = find_attr(&self.attrs.0, NFTA_TABLE_HANDLE)
                    .map(|h| format!(" handle {}", u64::from_be_bytes(h.try_into().expect("8"))))
                    .unwrap_or_default();
                format!("delete table {f} {}{handle}", text(get(NFTA_TABLE_NAME)))
            }
            NFT_MSG_NEWCHAIN => {
                let hook = get(NFTA_CHAIN_HOOK);
                format!(
                    "add chain {f} {} {} {} hook {} priority {}",
                    text(get(NFTA_CHAIN_TABLE)),
                    text(get(NFTA_CHAIN_NAME)),
                    text(get(NFTA_CHAIN_TYPE)),
                    be32(find_attr(hook, NFTA_HOOK_HOOKNUM).unwrap_or_default()),
                    be32(find_attr(hook, NFTA_HOOK_PRIORITY).unwrap_or_default()) as i32
                )
            }
            NFT_MSG_NEWRULE => {
                let exprs: Vec<String> = attrs_of(get(NFTA_RULE_EXPRESSIONS))
                    .into_iter()
                    .map(|(_, elem)| {
                        let name = text(find_attr(elem, NFTA_EXPR_NAME).unwrap_or_default());
                        let data = find_attr(elem, NFTA_EXPR_DATA).unwrap_or_default();
                        let mut parts = vec![name];
                        for (_, v) in attrs_of(data) {
                            parts.push(match attrs_of(v).as_slice() {
                                // Nested data (NFTA_DATA_VALUE, or a verdict).
                                [(NFTA_DATA_VALUE, d)] if v.len() >= 4 => hex(d),
                                [(NFTA_DATA_VERDICT, verdict)] => {
                                    format!("verdict {}", hex(verdict))
                                }
                                _ if v.len() == 4 => be32(v).to_string(),
                                _ => hex(v),
                            });
                        }
                        parts.join(" ")
                    })
                    .collect();
                format!(
                    "add rule {f} {} {}: {}",
                    text(get(NFTA_RULE_TABLE)),
                    text(get(NFTA_RULE_CHAIN)),
                    exprs.join(" | ")
                )
            }
            other => format!("message {other} {a:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut a = Attrs::default();
        a.str(1, "nat");
        // 4 header + "nat\0" = 8 bytes, already aligned.
        assert_eq!(a.0, [8, 0, 1, 0, b'n', b'a', b't', 0]);
        let mut b = Attrs::default();
        b.str(1, "input").be32(2, 7);
        // 4 + 6 = 10, padded to 12; then 8.
        assert_eq!(b.0.len(), 20);
        assert_eq!(&b.0[12..], &[8, 0, 2, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn nested_attributes_carry_the_nested_flag() {
        let mut a = Attrs::default();
        a.nest(4, |h| {
            h.be32(1, 0);
        });
        assert_eq!(u16::from_ne_bytes([a.0[2], a.0[3]]), 4 | NLA_F_NESTED);
        assert_eq!(u16::from_ne_bytes([a.0[0], a.0[1]]), 12);
    }

    #[test]
    fn acks_errors_and_data_are_parsed() {
        let mut buf = Vec::new();
        // An error answer for seq 7: -ENOENT, then the original header (ignored).
        let mut body = (-2i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 16]);
        buf.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&7u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&body);
        // A table answer for seq 8 with a handle.
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, "t").be64(NFTA_TABLE_HANDLE, 42);
        encode(&mut buf, 0xa00, 0, 8, 2, 0, &a.0);
        let answers = parse_answers(&buf);
        assert_eq!(answers[0], Answer::Ack { seq: 7, errno: 2 });
        let Answer::Data { seq, ty, attrs } = &answers[1] else {
            panic!("not data: {answers:?}");
        };
        assert_eq!((*seq, *ty), (8, 0xa00));
        assert_eq!(
            find_attr(attrs, NFTA_TABLE_HANDLE),
            Some(&42u64.to_be_bytes()[..])
        );
        assert_eq!(find_attr(attrs, 9), None);
    }

    #[test]
    fn truncated_answers_are_ignored_not_panicked_on() {
        for n in 0..40 {
            let mut buf = Vec::new();
            encode(&mut buf, 0xa00, 0, 8, 2, 0, &[8, 0, 4, 0, 1, 2, 3, 4]);
            buf.truncate(n);
            let _ = parse_answers(&buf);
        }
        assert_eq!(find_attr(&[200, 0, 1, 0, 0], 1), None);
    }
}
