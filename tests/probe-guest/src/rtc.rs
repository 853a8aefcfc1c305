//! The CMOS real-time clock (MC146818, ports 0x70/0x71): the probe's wall clock at boot,
//! which the agent's time sync then corrects.

use crate::arch::port;

const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const CENTURY: u8 = 0x32;

/// Status A bit 7: an update is in progress, the time registers are changing.
const A_UPDATE_IN_PROGRESS: u8 = 0x80;
/// Status B: binary (not BCD) values; 24-hour mode.
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
/// In 12-hour mode, bit 7 of the hours register means PM.
const HOURS_PM: u8 = 0x80;

fn read(register: u8) -> u8 {
    // Bit 7 of the index masks NMIs; leave it set as firmware does.
    port::outb(INDEX, 0x80 | register);
    port::inb(DATA)
}

/// The time registers in one consistent read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Raw([u8; 7]);

fn read_raw() -> Raw {
    // Spin out an update in progress (at most ~2 ms on real hardware; never on ours).
    for _ in 0..100_000 {
        if read(STATUS_A) & A_UPDATE_IN_PROGRESS == 0 {
            break;
        }
    }
    Raw([SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY].map(read))
}

fn from_bcd(value: u8) -> u8 {
    (value >> 4) * 10 + (value & 0x0f)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch the registers say, given status B's format bits.
fn to_unix(raw: Raw, status_b: u8) -> i64 {
    let decode = |v: u8| {
        if status_b & B_BINARY != 0 {
            v
        } else {
            from_bcd(v)
        }
    };
    let [sec, min, hour_raw, day, month, year, century] = raw.0;
    let pm = status_b & B_24H == 0 && hour_raw & HOURS_PM != 0;
    let mut hour = decode(hour_raw & !HOURS_PM);
    if status_b & B_24H == 0 {
        // 12-hour mode: 12 AM is 0, 12 PM is 12.
        hour = (hour % 12) + if pm { 12 } else { 0 };
    }
    let century = match decode(century) {
        c @ 19..=30 => i64::from(c),
        _ => 20,
    };
    let year = century * 100 + i64::from(decode(year));
    let days = days_from_civil(year, u32::from(decode(month)), u32::from(decode(day)));
    days * 86_400 + i64::from(hour) * 3600 + i64::from(decode(min)) * 60 + i64::from(decode(sec))
}

/// The RTC's time as Unix seconds (UTC, as our engine and QEMU's `-rtc base=utc` keep it).
pub fn unix_seconds() -> i64 {
    // Two equal reads in a row: no update happened between the registers.
    let mut raw = read_raw();
    for _ in 0..10 {
        let again = read_raw();
        if again == raw {
            break;
        }
        raw = again;
    }
    to_unix(raw, read(STATUS_B))
}
