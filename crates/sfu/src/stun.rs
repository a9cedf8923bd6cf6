//! Just enough STUN to route a datagram: is it STUN, and whose ufrag does it name.
//! The peer connection that receives it does the real parsing and checks its integrity.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

/// Whether `buf` looks like a STUN message (RFC 7983 demultiplexing plus the magic cookie).
pub(crate) fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN && buf[0] < 4 && buf[4..8] == MAGIC_COOKIE
}

/// The local (server) ufrag of a binding request's `USERNAME` ("server:client"), if any.
pub(crate) fn server_ufrag(buf: &[u8]) -> Option<&str> {
    if !is_stun(buf) {
        return None;
    }
    let declared = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let end = HEADER_LEN.checked_add(declared)?.min(buf.len());
    let mut at = HEADER_LEN;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
        let value = buf.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8]) -> Vec<u8> {
        let padded = username.len().div_ceil(4) * 4;
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        m.extend_from_slice(&(username.len() as u16).to_be_bytes());
        m.extend_from_slice(username);
        m.resize(HEADER_LEN + 4 + padded, 0);
        m
    }

    #[test]
    fn finds_the_server_ufrag() {
        assert_eq!(server_ufrag(&binding_request(b"srv1:cli")), Some("srv1"));
    }

    #[test]
    fn refuses_what_is_not_stun_or_is_cut_short() {
        assert_eq!(server_ufrag(b"\x80\x60hello rtp packet....."), None);
        let mut m = binding_request(b"srv1:cli");
        m.truncate(26);
        assert_eq!(server_ufrag(&m), None);
        assert_eq!(server_ufrag(&[]), None);
        // A length field that lies past the end must not panic.
        let mut m = binding_request(b"srv1:cli");
        m[22] = 0xff;
        m[23] = 0xff;
        assert_eq!(server_ufrag(&m), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 12345;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let mut stunny = buf.clone();
            if stunny.len() >= 8 {
                stunny[0] = 0;
                stunny[4..8].copy_from_slice(&MAGIC_COOKIE);
            }
            let _ = server_ufrag(&buf);
            let _ = server_ufrag(&stunny);
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        #[test]
        fn any_datagram_is_routed_or_refused_without_panicking(
            mut data in prop::collection::vec(any::<u8>(), 0..300),
            make_stun in any::<bool>(),
        ) {
            if make_stun && data.len() >= 8 {
                data[0] &= 0x03;
                data[4..8].copy_from_slice(&MAGIC_COOKIE);
            }
            let _ = server_ufrag(&data);
            let _ = crate::keyframe::vp8(&data);
            let _ = crate::keyframe::h264(&data);
        }
    }
}
