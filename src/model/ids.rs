//! Identifiers the regulations fix: the unified social credit code (统一社会信用代码, GB 32100-2015)
//! and administrative division codes (行政区划代码, GB/T 2260).

const CODE_CHARS: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

fn value(c: u8) -> Option<u32> {
    CODE_CHARS.iter().position(|&x| x == c).map(|p| p as u32)
}

/// The check character for the first 17 characters of a credit code, or `None` if one of them is
/// outside the code's alphabet.
pub fn credit_code_check_char(first17: &str) -> Option<char> {
    let b = first17.as_bytes();
    if b.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (i, &c) in b.iter().enumerate() {
        sum += value(c)? * WEIGHTS[i];
    }
    let check = (31 - sum % 31) % 31;
    Some(CODE_CHARS[check as usize] as char)
}

/// Checks a unified social credit code: 18 characters of the code alphabet (digits and capital
/// letters without I, O, S, V, Z) whose last character is the GB 32100-2015 check character.
pub fn check_credit_code(code: &str) -> Result<(), String> {
    if code.len() != 18 || !code.is_ascii() {
        return Err(format!(
            "`{code}` is not an 18-character unified social credit code"
        ));
    }
    let Some(want) = credit_code_check_char(&code[..17]) else {
        return Err(format!(
            "`{code}` has a character outside the credit code alphabet"
        ));
    };
    if !code.ends_with(want) {
        return Err(format!(
            "`{code}` fails its check character (expected {want})"
        ));
    }
    Ok(())
}

/// Checks a 6-digit administrative division code (or, with `prefix_ok`, a prefix of 0, 2, 4 or
/// 6 digits, as used for jurisdictions).
pub fn check_region_code(code: &str, prefix_ok: bool) -> Result<(), String> {
    let digits = code.bytes().all(|b| b.is_ascii_digit());
    let len_ok = if prefix_ok {
        matches!(code.len(), 0 | 2 | 4 | 6)
    } else {
        code.len() == 6
    };
    if !digits || !len_ok {
        return Err(format!(
            "`{code}` is not a {} administrative division code",
            if prefix_ok {
                "0/2/4/6-digit"
            } else {
                "6-digit"
            }
        ));
    }
    Ok(())
}

/// Whether `region` lies within `jurisdiction` (a code prefix; "" is national).
pub fn within(jurisdiction: &str, region: &str) -> bool {
    region.starts_with(jurisdiction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_credit_codes() {
        // Published codes (checked by hand against GB 32100-2015).
        for code in ["91350100M000100Y43", "91110000600037341L"] {
            check_credit_code(code).unwrap();
        }
        assert!(check_credit_code("91350100M000100Y44").is_err());
        assert!(check_credit_code("91350100M000100Y4").is_err());
        assert!(check_credit_code("9135010OM000100Y43").is_err()); // 'O' not in alphabet
    }

    #[test]
    fn check_char_makes_valid_codes() {
        let first = "91440300MA5EXAMPL";
        let c = credit_code_check_char(first).unwrap();
        check_credit_code(&format!("{first}{c}")).unwrap();
    }

    #[test]
    fn region_codes() {
        check_region_code("440305", false).unwrap();
        assert!(check_region_code("4403", false).is_err());
        check_region_code("4403", true).unwrap();
        check_region_code("", true).unwrap();
        assert!(check_region_code("44a305", false).is_err());
        assert!(within("44", "440305"));
        assert!(!within("4401", "440305"));
    }
}
