//! Announcement text for payment speakers, from templates configured per
//! locale and payment channel.
//!
//! A template is a sentence with one placeholder, `{amount}`, replaced by the
//! amount spoken in the locale's language (`zh*` → [`amount::chinese`],
//! `en*` → [`amount::english`]). Configuration (TOML through figment):
//!
//! ```toml
//! fallback_locale = "zh-CN"
//! [locales.zh-CN]
//! default = "收款{amount}"
//! wechat_pay = "微信收款{amount}"
//! ```
//!
//! Channel keys are `default`, `wechat_pay`, `alipay`, `unionpay`, `card` and
//! `cash`; unknown keys are refused when the configuration is read, so a typo
//! cannot silently fall back to `default`. A channel without a template uses
//! the locale's `default`. A configured `locales` table replaces the built-in
//! one as a whole (no merging), and [`Templates::validate`] should run at
//! startup.
//!
//! Locale choice for a requested locale, compared case-insensitively with `_`
//! read as `-`: the configured locale equal to it; else one with the same
//! language (the bare language, e.g. `zh`, first, then the alphabetically
//! first, so `zh-HK` gets `zh-CN` when `zh-CN` and `zh-TW` exist); else
//! `fallback_locale`.

use std::collections::BTreeMap;

use herald_schemas::v1::PaymentChannel;
use serde::Deserialize;
use thiserror::Error;

use crate::amount::{self, AmountError};

const AMOUNT: &str = "{amount}";

/// Announcement templates by locale.
#[derive(Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Templates {
    locales: BTreeMap<String, LocaleTemplates>,
    /// Used when no configured locale has the requested language.
    fallback_locale: String,
}

/// One locale's templates by payment channel.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct LocaleTemplates {
    default: Option<String>,
    wechat_pay: Option<String>,
    alipay: Option<String>,
    unionpay: Option<String>,
    card: Option<String>,
    cash: Option<String>,
}

/// Why no announcement text could be made, or why a configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("fallback locale {0:?} has no templates")]
    MissingFallbackLocale(String),
    #[error("locale {0:?} has no \"default\" template")]
    MissingDefault(String),
    #[error("template {locale}.{channel} does not contain {{amount}}")]
    MissingAmount {
        locale: String,
        channel: &'static str,
    },
    #[error("template {locale}.{channel} has a brace that is not part of {{amount}} (the only placeholder)")]
    UnknownPlaceholder {
        locale: String,
        channel: &'static str,
    },
    #[error(
        "locale {0:?} is neither Chinese (zh) nor English (en): amounts cannot be spoken in it"
    )]
    UnsupportedLanguage(String),
    #[error(transparent)]
    Amount(#[from] AmountError),
}

#[derive(Clone, Copy)]
enum Language {
    Chinese,
    English,
}

impl Default for Templates {
    fn default() -> Self {
        let locale = |default: &str, wechat: &str, alipay: &str, unionpay: &str| LocaleTemplates {
            default: Some(default.into()),
            wechat_pay: Some(wechat.into()),
            alipay: Some(alipay.into()),
            unionpay: Some(unionpay.into()),
            card: None,
            cash: None,
        };
        let locales = BTreeMap::from([
            (
                "zh-CN".to_string(),
                locale(
                    "收款{amount}",
                    "微信收款{amount}",
                    "支付宝收款{amount}",
                    "云闪付收款{amount}",
                ),
            ),
            (
                "en".to_string(),
                locale(
                    "Received {amount}",
                    "WeChat Pay received {amount}",
                    "Alipay received {amount}",
                    "UnionPay received {amount}",
                ),
            ),
        ]);
        Self {
            locales,
            fallback_locale: "zh-CN".into(),
        }
    }
}

impl Templates {
    /// The announcement for a payment, e.g. ("zh-CN", WechatPay, 1250, "CNY")
    /// → "微信收款十二元五角".
    pub fn render(
        &self,
        locale: &str,
        channel: PaymentChannel,
        amount_minor: i64,
        currency: &str,
    ) -> Result<String, TemplateError> {
        let (name, templates) = self.resolve(locale)?;
        let (key, template) = templates
            .for_channel(channel)
            .ok_or_else(|| TemplateError::MissingDefault(name.to_string()))?;
        // Checked here too so that a skipped validate() cannot make a speaker
        // announce a payment without its amount.
        check_template(name, key, template)?;
        let spoken = match language(name) {
            Some(Language::Chinese) => amount::chinese(amount_minor, currency)?,
            Some(Language::English) => amount::english(amount_minor, currency)?,
            None => return Err(TemplateError::UnsupportedLanguage(name.to_string())),
        };
        Ok(template.replace(AMOUNT, &spoken))
    }

    /// Checks that the fallback locale exists, that every locale has a
    /// supported language and a `default`, and that every template contains
    /// `{amount}` and no other placeholder. Reports the first problem.
    pub fn validate(&self) -> Result<(), TemplateError> {
        if !self.locales.contains_key(&self.fallback_locale) {
            return Err(TemplateError::MissingFallbackLocale(
                self.fallback_locale.clone(),
            ));
        }
        for (name, templates) in &self.locales {
            if language(name).is_none() {
                return Err(TemplateError::UnsupportedLanguage(name.clone()));
            }
            if templates.default.is_none() {
                return Err(TemplateError::MissingDefault(name.clone()));
            }
            for (key, template) in templates.entries() {
                if let Some(template) = template {
                    check_template(name, key, template)?;
                }
            }
        }
        Ok(())
    }

    fn resolve(&self, requested: &str) -> Result<(&str, &LocaleTemplates), TemplateError> {
        let wanted = normalize(requested);
        let normalized = || self.locales.iter().map(|(k, v)| (normalize(k), k, v));
        if let Some((_, name, templates)) = normalized().find(|(k, _, _)| *k == wanted) {
            return Ok((name, templates));
        }
        let wanted_language = language_tag(&wanted);
        if !wanted_language.is_empty() {
            let bare = normalized().find(|(k, _, _)| k == wanted_language);
            // Otherwise the first in BTreeMap (alphabetical) order.
            let any = || normalized().find(|(k, _, _)| language_tag(k) == wanted_language);
            if let Some((_, name, templates)) = bare.or_else(any) {
                return Ok((name, templates));
            }
        }
        self.locales
            .get_key_value(&self.fallback_locale)
            .map(|(name, templates)| (name.as_str(), templates))
            .ok_or_else(|| TemplateError::MissingFallbackLocale(self.fallback_locale.clone()))
    }
}

impl LocaleTemplates {
    fn entries(&self) -> [(&'static str, Option<&String>); 6] {
        [
            ("default", self.default.as_ref()),
            ("wechat_pay", self.wechat_pay.as_ref()),
            ("alipay", self.alipay.as_ref()),
            ("unionpay", self.unionpay.as_ref()),
            ("card", self.card.as_ref()),
            ("cash", self.cash.as_ref()),
        ]
    }

    /// The channel's template, or `default`, with the key it was found under.
    fn for_channel(&self, channel: PaymentChannel) -> Option<(&'static str, &str)> {
        let specific = match channel {
            PaymentChannel::Unspecified => None,
            PaymentChannel::WechatPay => self.wechat_pay.as_ref().map(|t| ("wechat_pay", t)),
            PaymentChannel::Alipay => self.alipay.as_ref().map(|t| ("alipay", t)),
            PaymentChannel::Unionpay => self.unionpay.as_ref().map(|t| ("unionpay", t)),
            PaymentChannel::Card => self.card.as_ref().map(|t| ("card", t)),
            PaymentChannel::Cash => self.cash.as_ref().map(|t| ("cash", t)),
        };
        specific
            .or_else(|| self.default.as_ref().map(|t| ("default", t)))
            .map(|(key, template)| (key, template.as_str()))
    }
}

fn check_template(
    locale: &str,
    channel: &'static str,
    template: &str,
) -> Result<(), TemplateError> {
    if !template.contains(AMOUNT) {
        return Err(TemplateError::MissingAmount {
            locale: locale.to_string(),
            channel,
        });
    }
    // "{merchant}" or a typo like "{amout}" would otherwise be spoken aloud.
    if template.replace(AMOUNT, "").contains(['{', '}']) {
        return Err(TemplateError::UnknownPlaceholder {
            locale: locale.to_string(),
            channel,
        });
    }
    Ok(())
}

/// Locale tags are case-insensitive (BCP 47); POSIX-style `zh_CN` is common
/// on devices.
fn normalize(locale: &str) -> String {
    locale.trim().to_ascii_lowercase().replace('_', "-")
}

/// The language subtag of a normalized locale ("zh-hk" → "zh").
fn language_tag(normalized: &str) -> &str {
    normalized.split('-').next().unwrap_or_default()
}

fn language(locale: &str) -> Option<Language> {
    match language_tag(&normalize(locale)) {
        "zh" => Some(Language::Chinese),
        "en" => Some(Language::English),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(toml: &str) -> Result<Templates, Box<figment::Error>> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(toml))
            .extract()
            .map_err(Box::new)
    }

    #[test]
    fn defaults_render_every_channel() {
        let t = Templates::default();
        t.validate().expect("defaults are valid");
        let zh = |channel| t.render("zh-CN", channel, 1250, "CNY").expect("zh-CN");
        assert_eq!(zh(PaymentChannel::Unspecified), "收款十二元五角");
        assert_eq!(zh(PaymentChannel::WechatPay), "微信收款十二元五角");
        assert_eq!(zh(PaymentChannel::Alipay), "支付宝收款十二元五角");
        assert_eq!(zh(PaymentChannel::Unionpay), "云闪付收款十二元五角");
        assert_eq!(zh(PaymentChannel::Card), "收款十二元五角");
        assert_eq!(zh(PaymentChannel::Cash), "收款十二元五角");
        let en = |channel| t.render("en", channel, 2105, "USD").expect("en");
        assert_eq!(
            en(PaymentChannel::Cash),
            "Received twenty-one dollars and five cents"
        );
        assert_eq!(
            en(PaymentChannel::WechatPay),
            "WeChat Pay received twenty-one dollars and five cents"
        );
        assert_eq!(
            t.render("en", PaymentChannel::Alipay, 100, "CNY")
                .expect("en CNY"),
            "Alipay received one yuan"
        );
    }

    #[test]
    fn locale_fallback_order() {
        let t = Templates::default();
        let said = |locale: &str| {
            t.render(locale, PaymentChannel::Unspecified, 100, "CNY")
                .expect("rendered")
        };
        // Exact, ignoring case and '_' vs '-'.
        assert_eq!(said("zh_cn"), "收款一元");
        // Same language.
        assert_eq!(said("zh-HK"), "收款一元");
        assert_eq!(said("en-US"), "Received one yuan");
        assert_eq!(said("EN_gb"), "Received one yuan");
        // Neither: the fallback locale.
        assert_eq!(said("fr-FR"), "收款一元");
        assert_eq!(said(""), "收款一元");

        let t = from_toml(
            r#"
            fallback_locale = "en"
            [locales.en]
            default = "Got {amount}"
            [locales.zh-TW]
            default = "台{amount}"
            [locales.zh-CN]
            default = "陆{amount}"
            [locales.zh]
            default = "中{amount}"
            "#,
        )
        .expect("config");
        t.validate().expect("valid");
        let said = |locale: &str| {
            t.render(locale, PaymentChannel::Unspecified, 100, "CNY")
                .expect("rendered")
        };
        assert_eq!(said("zh-TW"), "台一元");
        assert_eq!(said("zh-HK"), "中一元", "bare language before others");
        assert_eq!(said("de"), "Got one yuan");
    }

    #[test]
    fn alphabetical_when_no_bare_language() {
        let t = from_toml(
            r#"
            [locales.zh-TW]
            default = "台{amount}"
            [locales.zh-CN]
            default = "陆{amount}"
            "#,
        )
        .expect("config");
        assert_eq!(t.fallback_locale, "zh-CN", "default fallback");
        assert_eq!(
            t.render("zh-HK", PaymentChannel::Cash, 5, "CNY")
                .expect("rendered"),
            "陆五分"
        );
    }

    #[test]
    fn configuration_replaces_builtin_locales() {
        let t = from_toml("[locales.zh-CN]\ndefault = \"到账{amount}\"\n").expect("config");
        t.validate().expect("valid");
        assert_eq!(
            t.render("en", PaymentChannel::WechatPay, 1000, "CNY")
                .expect("falls back to zh-CN"),
            "到账十元"
        );
        assert!(from_toml("[locales.zh-CN]\nwechatpay = \"x{amount}\"\n").is_err());
        assert!(from_toml("fallback = \"en\"\n").is_err());
        let t = from_toml("").expect("empty config");
        assert_eq!(t.locales.len(), 2, "built-in templates");
    }

    #[test]
    fn validate_reports_problems() {
        let invalid = |toml: &str| {
            from_toml(toml)
                .expect("parses")
                .validate()
                .expect_err("invalid")
        };
        assert_eq!(
            invalid("fallback_locale = \"ja\""),
            TemplateError::MissingFallbackLocale("ja".into())
        );
        assert_eq!(
            invalid("[locales.zh-CN]\nalipay = \"{amount}\""),
            TemplateError::MissingDefault("zh-CN".into())
        );
        assert_eq!(
            invalid("[locales.zh-CN]\ndefault = \"{amount}\"\ncash = \"现金收款\""),
            TemplateError::MissingAmount {
                locale: "zh-CN".into(),
                channel: "cash"
            }
        );
        assert_eq!(
            invalid("[locales.zh-CN]\ndefault = \"{merchant}收款{amount}\""),
            TemplateError::UnknownPlaceholder {
                locale: "zh-CN".into(),
                channel: "default"
            }
        );
        assert_eq!(
            invalid("[locales.zh-CN]\ndefault = \"{amount}\"\n[locales.fr]\ndefault = \"Reçu {amount}\""),
            TemplateError::UnsupportedLanguage("fr".into())
        );
    }

    #[test]
    fn render_refusals() {
        let t = Templates::default();
        assert!(matches!(
            t.render("zh-CN", PaymentChannel::Alipay, 100, "USD"),
            Err(TemplateError::Amount(AmountError::NotSpokenIn { .. }))
        ));
        assert!(matches!(
            t.render("en", PaymentChannel::Alipay, -100, "USD"),
            Err(TemplateError::Amount(AmountError::Negative(-100)))
        ));
        // Not validated: render still refuses what validate would.
        let t = from_toml("fallback_locale = \"ja\"\n[locales.zh-CN]\ncard = \"刷卡\"")
            .expect("parses");
        assert_eq!(
            t.render("zh-CN", PaymentChannel::Cash, 1, "CNY"),
            Err(TemplateError::MissingDefault("zh-CN".into()))
        );
        assert_eq!(
            t.render("zh-CN", PaymentChannel::Card, 1, "CNY"),
            Err(TemplateError::MissingAmount {
                locale: "zh-CN".into(),
                channel: "card"
            })
        );
        assert_eq!(
            t.render("fr", PaymentChannel::Card, 1, "CNY"),
            Err(TemplateError::MissingFallbackLocale("ja".into()))
        );
        let t = from_toml("fallback_locale = \"fr\"\n[locales.fr]\ndefault = \"Reçu {amount}\"")
            .expect("parses");
        assert_eq!(
            t.render("fr", PaymentChannel::Card, 1, "EUR"),
            Err(TemplateError::UnsupportedLanguage("fr".into()))
        );
    }
}
