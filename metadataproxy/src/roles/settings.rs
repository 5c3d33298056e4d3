//! Where role credentials come from (`STS`).

use super::AccountId;

/// Where role credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsConfig {
    /// `sts:AssumeRole` and `iam:GetRole` through the AWS SDK.
    Aws,
    /// The built-in STS: fake credentials issued by the agent (`STS=builtin`).
    Builtin {
        /// The account of bare role names (`BUILTIN_ACCOUNT_ID`).
        account_id: AccountId,
    },
}
