//! Checks a CronJob schedule the way the controller-manager parses it (five fields or a
//! macro), so that a bad one is reported in the resource's status instead of failing
//! each apply. The CRD's CEL rule only checks the shape: CEL has no cron parser.

/// `(lowest, highest, names)` of the five fields, in order.
const FIELDS: [(&str, u32, u32, &[&str]); 5] = [
    ("minute", 0, 59, &[]),
    ("hour", 0, 23, &[]),
    ("day of month", 1, 31, &[]),
    (
        "month",
        1,
        12,
        &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    ),
    (
        "day of week",
        0,
        6,
        &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    ),
];

const MACROS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Ok, or why the schedule is not one the controller-manager accepts.
pub fn validate(schedule: &str) -> Result<(), String> {
    let schedule = schedule.trim();
    if schedule.starts_with('@') {
        return if MACROS.contains(&schedule) {
            Ok(())
        } else {
            Err(format!("unknown macro {schedule:?}"))
        };
    }
    if schedule.contains("TZ=") {
        // The API server rejects it too; the time zone has its own field.
        return Err("TZ= is not allowed in the schedule: use spec.timeZone".into());
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
            fields.len()
        ));
    }
    for (text, (what, lo, hi, names)) in fields.iter().zip(FIELDS) {
        field(text, lo, hi, names).map_err(|e| format!("{what} {text:?}: {e}"))?;
    }
    Ok(())
}

fn field(text: &str, lo: u32, hi: u32, names: &[&str]) -> Result<(), String> {
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("bad step {s:?}"))?;
                if step == 0 {
                    return Err("step must be at least 1".into());
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        if range == "*" || range == "?" {
            continue;
        }
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (value(a, lo, hi, names)?, value(b, lo, hi, names)?),
            None => {
                let v = value(range, lo, hi, names)?;
                // `5/15` means 5 to the end, every 15.
                (v, if step.is_some() { hi } else { v })
            }
        };
        if a > b {
            return Err(format!("range {range:?} runs backwards"));
        }
    }
    Ok(())
}

fn value(text: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u32, String> {
    let upper = text.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        return Ok(lo + i as u32);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if v < lo || v > hi {
        return Err(format!("{v} is outside {lo}-{hi}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_what_the_controller_manager_accepts() {
        for ok in [
            "0 3 * * *",
            "*/15 * * * *",
            "5/10 * * * *",
            "0 0-23/2 * * MON-FRI",
            "30 2 1,15 * *",
            "0 4 ? JAN,jul sun",
            "59 23 31 12 6",
            "@daily",
            "@hourly",
            "  0 3 * * *  ",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_with_the_field_that_is_wrong() {
        for (bad, says) in [
            ("", "expected 5 fields"),
            ("* * * *", "got 4"),
            ("0 3 * * * *", "got 6"),
            ("60 * * * *", "minute \"60\": 60 is outside 0-59"),
            ("0 24 * * *", "hour"),
            ("0 0 0 * *", "day of month"),
            ("0 0 * 13 *", "month"),
            ("0 0 * * 7", "day of week"),
            ("*/0 * * * *", "step must be at least 1"),
            ("0 5-2 * * *", "runs backwards"),
            ("x * * * *", "is not a number"),
            ("0 0 * FOO *", "month"),
            ("@every 1h", "unknown macro"),
            ("@fortnightly", "unknown macro"),
            ("TZ=UTC 0 3 * * *", "spec.timeZone"),
        ] {
            let err = validate(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
