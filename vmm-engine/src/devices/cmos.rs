//! The CMOS RTC (MC146818) on ports 0x70/0x71: the guest's wall-clock time at boot is the
//! host's (UTC), and a guest that sets the clock keeps its offset from the host's.
//! Also the BIOS memory-size bytes some guests read.

use std::time::{SystemTime, UNIX_EPOCH};

use super::PioDevice;

pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_PORT_LEN: u16 = 2;

/// Register numbers (MC146818A datasheet; "CMOS memory map" for the BIOS bytes).
mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const MINUTES: u8 = 0x02;
    pub const HOURS: u8 = 0x04;
    pub const WEEKDAY: u8 = 0x06;
    pub const DAY_OF_MONTH: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const STATUS_A: u8 = 0x0a;
    pub const STATUS_B: u8 = 0x0b;
    pub const STATUS_C: u8 = 0x0c;
    pub const STATUS_D: u8 = 0x0d;
    pub const EXT_MEM_LOW: u8 = 0x30;
    pub const EXT_MEM_HIGH: u8 = 0x31;
    pub const CENTURY: u8 = 0x32;
    pub const MEM_ABOVE_16M_LOW: u8 = 0x34;
    pub const MEM_ABOVE_16M_HIGH: u8 = 0x35;
    pub const MEM_ABOVE_4G_LOW: u8 = 0x5b;
}

/// Status A: 32.768 kHz time base, 1024 Hz periodic rate; UIP (bit 7) never set since
/// our time is read atomically.
const STATUS_A_DEFAULT: u8 = 0x26;
/// Status B bits.
const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
/// Status D bit 7: the RAM and time are valid (battery good).
const D_VALID: u8 = 0x80;
/// Bit 7 of the index port masks NMIs; it is not part of the register number.
const INDEX_MASK: u8 = 0x7f;

pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    /// Seconds the guest's clock runs ahead of the host's.
    offset_secs: i64,
    now: fn() -> i64,
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The RTC in a snapshot: its RAM and how far the guest set its clock from the host's
/// (the time itself runs on with the host's, as a battery-backed clock would).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosSnapshot {
    pub index: u8,
    pub ram: Vec<u8>,
    pub offset_secs: i64,
}

impl Cmos {
    pub fn save(&self) -> CmosSnapshot {
        CmosSnapshot {
            index: self.index,
            ram: self.ram.to_vec(),
            offset_secs: self.offset_secs,
        }
    }

    pub fn restore(&mut self, saved: &CmosSnapshot) -> Result<(), String> {
        self.ram = saved
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| format!("CMOS: {} bytes of RAM where it has 128", saved.ram.len()))?;
        self.index = saved.index & INDEX_MASK;
        self.offset_secs = saved.offset_secs;
        Ok(())
    }

    pub fn new(mem_size: u64) -> Self {
        Self::with_clock(mem_size, host_now)
    }

    fn with_clock(mem_size: u64, now: fn() -> i64) -> Self {
        let mut ram = [0u8; 128];
        ram[reg::STATUS_A as usize] = STATUS_A_DEFAULT;
        ram[reg::STATUS_B as usize] = B_24H;
        ram[reg::STATUS_D as usize] = D_VALID;
        // Memory between 1 MiB and 64 MiB in KiB, above 16 MiB (below the 4 GiB hole) and
        // above 4 GiB in 64 KiB units.
        let low = mem_size.min(crate::x86_64::layout::MMIO_HOLE_START);
        let ext_kib = (low.saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        ram[reg::EXT_MEM_LOW as usize..=reg::EXT_MEM_HIGH as usize]
            .copy_from_slice(&ext_kib.to_le_bytes());
        let above_16m = (low.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        ram[reg::MEM_ABOVE_16M_LOW as usize..=reg::MEM_ABOVE_16M_HIGH as usize]
            .copy_from_slice(&above_16m.to_le_bytes());
        let above_4g = mem_size.saturating_sub(crate::x86_64::layout::MMIO_HOLE_START) >> 16;
        ram[reg::MEM_ABOVE_4G_LOW as usize..reg::MEM_ABOVE_4G_LOW as usize + 3]
            .copy_from_slice(&above_4g.to_le_bytes()[..3]);
        Self {
            index: 0,
            ram,
            offset_secs: 0,
            now,
        }
    }

    fn encode(&self, v: u32) -> u8 {
        if self.ram[reg::STATUS_B as usize] & B_BINARY != 0 {
            v as u8
        } else {
            (((v / 10) << 4) | (v % 10)) as u8
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.ram[reg::STATUS_B as usize] & B_BINARY != 0 {
            u32::from(v)
        } else {
            u32::from(v >> 4) * 10 + u32::from(v & 0xf)
        }
    }

    fn read_register(&self, r: u8) -> u8 {
        let b = self.ram[reg::STATUS_B as usize];
        // While the guest is setting the clock it reads back what it wrote.
        if b & B_SET == 0 && is_time_register(r) {
            let t = DateTime::from_unix((self.now)() + self.offset_secs);
            return match r {
                reg::SECONDS => self.encode(t.second),
                reg::MINUTES => self.encode(t.minute),
                reg::HOURS if b & B_24H != 0 => self.encode(t.hour),
                reg::HOURS => {
                    let h12 = if t.hour % 12 == 0 { 12 } else { t.hour % 12 };
                    self.encode(h12) | if t.hour >= 12 { 0x80 } else { 0 }
                }
                reg::WEEKDAY => self.encode(t.weekday + 1),
                reg::DAY_OF_MONTH => self.encode(t.day),
                reg::MONTH => self.encode(t.month),
                reg::YEAR => self.encode(t.year % 100),
                _ => self.encode(t.year / 100),
            };
        }
        match r {
            reg::STATUS_C => 0,
            _ => self.ram[r as usize],
        }
    }

    fn write_register(&mut self, r: u8, value: u8) {
        match r {
            reg::STATUS_C | reg::STATUS_D => {}
            reg::STATUS_B => {
                let was_setting = self.ram[r as usize] & B_SET != 0;
                if !was_setting && value & B_SET != 0 {
                    self.latch_time();
                }
                self.ram[r as usize] = value;
                if was_setting && value & B_SET == 0 {
                    self.commit_time();
                }
            }
            _ => self.ram[r as usize] = value,
        }
    }

    /// Copies the current time into the registers so a guest that sets only some of
    /// them keeps the rest.
    fn latch_time(&mut self) {
        for r in [
            reg::SECONDS,
            reg::MINUTES,
            reg::HOURS,
            reg::WEEKDAY,
            reg::DAY_OF_MONTH,
            reg::MONTH,
            reg::YEAR,
            reg::CENTURY,
        ] {
            self.ram[r as usize] = self.read_register(r);
        }
    }

    fn commit_time(&mut self) {
        let d = |r: u8| self.decode(self.ram[r as usize]);
        let hour_raw = self.ram[reg::HOURS as usize];
        let hour = if self.ram[reg::STATUS_B as usize] & B_24H != 0 {
            d(reg::HOURS)
        } else {
            self.decode(hour_raw & 0x7f) % 12 + if hour_raw & 0x80 != 0 { 12 } else { 0 }
        };
        let t = DateTime {
            year: d(reg::CENTURY) * 100 + d(reg::YEAR),
            month: d(reg::MONTH),
            day: d(reg::DAY_OF_MONTH),
            hour,
            minute: d(reg::MINUTES),
            second: d(reg::SECONDS),
            weekday: 0,
        };
        if let Some(secs) = t.to_unix() {
            self.offset_secs = secs - (self.now)();
        }
    }
}

fn is_time_register(r: u8) -> bool {
    matches!(
        r,
        reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::WEEKDAY
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY
    )
}

impl PioDevice for Cmos {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let v = if offset == 1 {
            self.read_register(self.index)
        } else {
            0xff
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = v & INDEX_MASK,
            _ => self.write_register(self.index, v),
        }
    }
}

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
}

impl DateTime {
    /// Days-to-civil conversion (H. Hinnant, "chrono-Compatible Low-Level Date
    /// Algorithms"), valid for every date a CMOS can hold.
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        DateTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    fn to_unix(self) -> Option<i64> {
        if !(1..=12).contains(&self.month)
            || !(1..=31).contains(&self.day)
            || self.hour > 23
            || self.minute > 59
            || self.second > 59
        {
            return None;
        }
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + i64::from(self.hour * 3600 + self.minute * 60 + self.second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-25 11:44:22 UTC, a Wednesday.
    const FIXED: i64 = 1_795_607_062;

    fn read(c: &mut Cmos, r: u8) -> u8 {
        c.write(0, &[r]);
        let mut b = [0];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn calendar_conversion_round_trips() {
        let t = DateTime::from_unix(FIXED);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2026, 11, 25, 11, 44, 22, 3)
        );
        assert_eq!(t.to_unix(), Some(FIXED));
        assert_eq!(DateTime::from_unix(0).to_unix(), Some(0));
        let leap = DateTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn reads_host_time_in_bcd_and_keeps_a_guest_set_offset() {
        let mut c = Cmos::with_clock(512 << 20, || FIXED);
        assert_eq!(read(&mut c, reg::YEAR), 0x26);
        assert_eq!(read(&mut c, reg::CENTURY), 0x20);
        assert_eq!(read(&mut c, reg::MONTH), 0x11);
        assert_eq!(read(&mut c, reg::HOURS), 0x11);
        assert_eq!(read(&mut c, reg::STATUS_D), D_VALID);
        // The guest sets the clock one hour ahead.
        c.write(0, &[reg::STATUS_B]);
        c.write(1, &[B_24H | B_SET]);
        c.write(0, &[reg::HOURS]);
        c.write(1, &[0x12]);
        c.write(0, &[reg::STATUS_B]);
        c.write(1, &[B_24H]);
        assert_eq!(c.offset_secs, 3600);
        assert_eq!(read(&mut c, reg::HOURS), 0x12);
        assert_eq!(read(&mut c, reg::MINUTES), 0x44);
    }

    #[test]
    fn binary_mode_and_memory_size() {
        let mut c = Cmos::with_clock(5 << 30, || FIXED);
        c.write(0, &[reg::STATUS_B]);
        c.write(1, &[B_24H | B_BINARY]);
        assert_eq!(read(&mut c, reg::YEAR), 26);
        let above_4g = u32::from_le_bytes([
            read(&mut c, 0x5b),
            read(&mut c, 0x5c),
            read(&mut c, 0x5d),
            0,
        ]);
        assert_eq!(u64::from(above_4g) << 16, 2 << 30);
    }
}
