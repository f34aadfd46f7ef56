//! Recognizes the customer payment codes ("付款码") that QR scan boxes read
//! from a customer's phone, so the scan processor can route a scan to its
//! scheme or dead-letter it with a reason.
//!
//! Rules, from the schemes' published formats for merchant-scanned codes:
//!
//! | Scheme               | First two digits | Length (digits) |
//! |----------------------|------------------|-----------------|
//! | WeChat Pay           | 10–15            | 18              |
//! | Alipay               | 25–30            | 16–24           |
//! | UnionPay QR (云闪付) | 62               | 19              |
//!
//! Surrounding whitespace (scanners often append CR/LF) is trimmed; inside
//! the code only ASCII digits are allowed. These are prefix and length checks
//! only: the codes carry no checksum, so a code that passes may still be
//! expired or forged, which only the scheme can tell.

use std::fmt;

use herald_schemas::v1::PaymentScheme;

/// Why a scanned code is not a payment code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanRejection {
    /// Nothing but whitespace.
    Empty,
    /// `position` counts characters from 1 in the trimmed code.
    NonDigit { position: usize, character: char },
    /// The prefix names a scheme whose codes have another length.
    WrongLength {
        scheme: PaymentScheme,
        length: usize,
    },
    /// No scheme starts its codes with these (at most two) digits.
    UnknownPrefix { prefix: String },
}

impl ScanRejection {
    /// Stable machine-readable reason for dead-letter records and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::NonDigit { .. } => "non_digit",
            Self::WrongLength { .. } => "wrong_length",
            Self::UnknownPrefix { .. } => "unknown_prefix",
        }
    }
}

// The messages never repeat the code: it is a live bearer token for a minute
// or so, and these messages end up in logs.
impl fmt::Display for ScanRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "the scanned code is empty"),
            Self::NonDigit {
                position,
                character,
            } => write!(
                f,
                "the scanned code has {character:?} at position {position}; payment codes are digits only"
            ),
            Self::WrongLength { scheme, length } => {
                let (name, expected) = match scheme {
                    PaymentScheme::WechatPay => ("WeChat Pay", "18"),
                    PaymentScheme::Alipay => ("Alipay", "16 to 24"),
                    PaymentScheme::Unionpay => ("UnionPay", "19"),
                    PaymentScheme::Unspecified => ("unknown", "no"),
                };
                write!(
                    f,
                    "{name} payment codes have {expected} digits, the scanned code has {length}"
                )
            }
            Self::UnknownPrefix { prefix } => {
                write!(f, "no payment scheme has codes starting with {prefix}")
            }
        }
    }
}

impl std::error::Error for ScanRejection {}

/// The scheme of a scanned payment code, or why it is not one.
pub fn classify(code: &str) -> Result<PaymentScheme, ScanRejection> {
    let code = code.trim();
    if code.is_empty() {
        return Err(ScanRejection::Empty);
    }
    if let Some((index, character)) = code.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
        return Err(ScanRejection::NonDigit {
            position: index + 1,
            character,
        });
    }
    // All ASCII digits from here on, so byte slicing and lengths are safe.
    let prefix = &code[..code.len().min(2)];
    let (scheme, lengths) = match prefix {
        "10" | "11" | "12" | "13" | "14" | "15" => (PaymentScheme::WechatPay, 18..=18),
        "25" | "26" | "27" | "28" | "29" | "30" => (PaymentScheme::Alipay, 16..=24),
        "62" => (PaymentScheme::Unionpay, 19..=19),
        _ => {
            return Err(ScanRejection::UnknownPrefix {
                prefix: prefix.to_string(),
            })
        }
    };
    if !lengths.contains(&code.len()) {
        return Err(ScanRejection::WrongLength {
            scheme,
            length: code.len(),
        });
    }
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_scheme() {
        for prefix in 10..=15 {
            let code = format!("{prefix}{}", "3".repeat(16));
            assert_eq!(classify(&code), Ok(PaymentScheme::WechatPay), "{code}");
        }
        for prefix in 25..=30 {
            for length in 16..=24 {
                let code = format!("{prefix}{}", "7".repeat(length - 2));
                assert_eq!(classify(&code), Ok(PaymentScheme::Alipay), "{code}");
            }
        }
        assert_eq!(classify("6225881234567890123"), Ok(PaymentScheme::Unionpay));
        assert_eq!(
            classify("  134567890123456789\r\n"),
            Ok(PaymentScheme::WechatPay),
            "surrounding whitespace is trimmed"
        );
    }

    #[test]
    fn rejects_with_reasons() {
        let rejected = |code: &str| classify(code).expect_err(code);
        assert_eq!(rejected(""), ScanRejection::Empty);
        assert_eq!(rejected(" \t\n"), ScanRejection::Empty);
        assert_eq!(
            rejected("13456789012345678A"),
            ScanRejection::NonDigit {
                position: 18,
                character: 'A'
            }
        );
        assert_eq!(
            rejected("1345 6789012345678"),
            ScanRejection::NonDigit {
                position: 5,
                character: ' '
            }
        );
        // Full-width digits are not ASCII digits; position counts characters.
        assert_eq!(
            rejected("１3"),
            ScanRejection::NonDigit {
                position: 1,
                character: '１'
            }
        );
        assert_eq!(
            rejected("1345678901234567"),
            ScanRejection::WrongLength {
                scheme: PaymentScheme::WechatPay,
                length: 16
            }
        );
        assert_eq!(
            rejected(&format!("28{}", "0".repeat(23))),
            ScanRejection::WrongLength {
                scheme: PaymentScheme::Alipay,
                length: 25
            }
        );
        assert_eq!(
            rejected("28001234567890"),
            ScanRejection::WrongLength {
                scheme: PaymentScheme::Alipay,
                length: 14
            }
        );
        assert_eq!(
            rejected("622588123456789012"),
            ScanRejection::WrongLength {
                scheme: PaymentScheme::Unionpay,
                length: 18
            }
        );
        assert_eq!(
            rejected("163456789012345678"),
            ScanRejection::UnknownPrefix {
                prefix: "16".into()
            }
        );
        assert_eq!(
            rejected("9"),
            ScanRejection::UnknownPrefix { prefix: "9".into() }
        );
    }

    #[test]
    fn reasons_are_stable_and_messages_readable() {
        let cases = [
            ("", "empty"),
            ("12x", "non_digit"),
            ("12", "wrong_length"),
            ("99", "unknown_prefix"),
        ];
        for (code, reason) in cases {
            assert_eq!(classify(code).expect_err(code).as_str(), reason);
        }
        let code = "1345678901234";
        let message = classify(code).expect_err(code).to_string();
        assert_eq!(
            message,
            "WeChat Pay payment codes have 18 digits, the scanned code has 13"
        );
        assert!(!message.contains(code), "messages do not leak the code");
        assert_eq!(
            classify("12x").expect_err("x").to_string(),
            "the scanned code has 'x' at position 3; payment codes are digits only"
        );
    }
}
