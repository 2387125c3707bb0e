//! What apply recorded for each transaction of a commit.
//!
//! A transaction that is not well formed, not for this chain, not signed
//! by its sender, out of nonce order or unable to pay its fee changes
//! nothing. One that passes those checks pays its fee and uses its nonce
//! even if its action is then refused: otherwise a signed transaction whose
//! action fails could be included again and again for free.
//!
//! A receipt's encoding is part of the state root, so it holds only what
//! every validator computes alike: a refusal's kind and numbers, never a
//! decoder's message text.

use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};
use soma_host::Digest;
use std::fmt;

/// Why a transaction changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The bytes are not a signed transaction.
    Malformed,
    /// It is for another network.
    WrongChain,
    /// The signature does not verify for the sender.
    BadSignature,
    /// The nonce is not the sender's next one.
    BadNonce {
        /// The nonce the sender's account expects.
        expected: u64,
        /// The nonce the transaction carries.
        got: u64,
    },
    /// The fee is below the protocol's minimum.
    FeeTooLow {
        /// The minimum.
        min: u64,
    },
    /// The sender's balance does not cover the fee, or (after paying it)
    /// what the action moves.
    InsufficientFunds {
        /// What it needs.
        needed: u64,
        /// What it has.
        available: u64,
    },
    /// A stake action by an account that is not a validator.
    NotAValidator,
    /// A withdrawal of more stake than the validator has.
    InsufficientStake {
        /// What it has.
        available: u64,
    },
    /// A withdrawal that would leave a stake above zero but below the
    /// minimum.
    StakeBelowMinimum {
        /// The minimum.
        min: u64,
    },
    /// An encoder bond below the minimum.
    BondTooLow {
        /// The minimum.
        min: u64,
    },
    /// The package is already registered.
    EncoderExists,
    /// No encoder is registered for the package.
    UnknownEncoder,
    /// The sender does not own the encoder.
    NotOwner,
    /// A balance would exceed what a `u64` holds.
    Overflow,
    /// Submitted data is longer than the protocol allows.
    DataTooLarge {
        /// The limit, in bytes.
        max: u32,
    },
    /// A job payment below the minimum.
    PaymentTooLow {
        /// The minimum.
        min: u64,
    },
    /// No active encoder is registered to run a job.
    NoEncoders,
    /// An attestation for a job that does not exist.
    UnknownJob,
    /// An attestation for a job already decided.
    JobDecided,
    /// A second attestation by one validator for one job.
    AlreadyAttested,
    /// An attestation whose results do not match the job's shard (count)
    /// or the network's dimension.
    BadAttestation,
    /// A registration whose manifest does not decode or whose signature
    /// does not verify.
    BadPackage,
    /// A registration by someone other than the package's signer.
    NotPackageSigner,
    /// A package whose dimension is not the network's.
    WrongDimension {
        /// The network's dimension.
        expected: u16,
    },
    /// A deregistration of an encoder that is in the shard of an undecided
    /// job (its bond may yet be slashed).
    EncoderBusy,
    /// A withdrawal by a validator with attestations of undecided jobs (its
    /// stake may yet be slashed for deviance).
    StakeLocked,
    /// Submitted data that is not UTF-8 text: the network embeds text (every
    /// encoder it admits is a text encoder).
    NotText,
    /// A package of an encoder of another modality than text.
    NotTextEncoder,
    /// A package whose encoder accepts less input than the network's data
    /// may hold.
    InputLimitTooLow {
        /// The network's largest data, in bytes.
        min: u32,
    },
    /// A submission of another modality than text: the network embeds text.
    NotTextData,
}

/// What happened to one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The transaction's digest, if it decoded.
    pub transaction: Option<Digest>,
    /// `None` if it applied; why it did not otherwise.
    pub rejection: Option<Rejection>,
    /// The fee paid (0 if the transaction changed nothing).
    pub fee: u64,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed => write!(f, "not a well-formed signed transaction"),
            Rejection::WrongChain => write!(f, "signed for another network"),
            Rejection::BadSignature => write!(f, "the signature does not verify"),
            Rejection::BadNonce { expected, got } => {
                write!(f, "nonce {got}; the account's next nonce is {expected}")
            }
            Rejection::FeeTooLow { min } => write!(f, "the fee is below the minimum of {min}"),
            Rejection::InsufficientFunds { needed, available } => {
                write!(
                    f,
                    "needs {needed} base units; the account holds {available}"
                )
            }
            Rejection::NotAValidator => write!(f, "the sender is not a validator"),
            Rejection::InsufficientStake { available } => {
                write!(f, "the validator has only {available} staked")
            }
            Rejection::StakeBelowMinimum { min } => {
                write!(f, "the stake left would be below the minimum of {min}")
            }
            Rejection::BondTooLow { min } => write!(f, "the bond is below the minimum of {min}"),
            Rejection::EncoderExists => write!(f, "the package is already registered"),
            Rejection::UnknownEncoder => write!(f, "no encoder is registered for the package"),
            Rejection::NotOwner => write!(f, "the sender does not own the encoder"),
            Rejection::Overflow => write!(f, "a balance would overflow"),
            Rejection::DataTooLarge { max } => write!(f, "the data is longer than {max} bytes"),
            Rejection::PaymentTooLow { min } => {
                write!(f, "the job payment is below the minimum of {min}")
            }
            Rejection::NoEncoders => write!(f, "no active encoder is registered to run the job"),
            Rejection::UnknownJob => write!(f, "no such job"),
            Rejection::JobDecided => write!(f, "the job is already decided"),
            Rejection::AlreadyAttested => write!(f, "the validator already attested this job"),
            Rejection::BadAttestation => {
                write!(
                    f,
                    "the results do not match the job's shard or the network's dimension"
                )
            }
            Rejection::BadPackage => write!(f, "the package manifest or its signature is invalid"),
            Rejection::NotPackageSigner => write!(f, "the sender did not sign the package"),
            Rejection::WrongDimension { expected } => {
                write!(
                    f,
                    "the encoder's dimension is not the network's ({expected})"
                )
            }
            Rejection::EncoderBusy => write!(f, "the encoder is in the shard of an undecided job"),
            Rejection::StakeLocked => write!(f, "the validator attested jobs not yet decided"),
            Rejection::NotText => write!(f, "the data is not UTF-8 text"),
            Rejection::NotTextEncoder => write!(f, "the network admits text encoders only"),
            Rejection::NotTextData => write!(f, "the network embeds text only"),
            Rejection::InputLimitTooLow { min } => write!(
                f,
                "the encoder must accept inputs of {min} bytes, the network's largest data"
            ),
        }
    }
}

impl Encode for Receipt {
    fn encode(&self, w: &mut Writer) {
        match &self.transaction {
            Some(digest) => {
                w.bool(true);
                w.array(&digest.0);
            }
            None => w.bool(false),
        }
        w.u64(self.fee);
        let Some(rejection) = &self.rejection else {
            w.u8(0);
            return;
        };
        match *rejection {
            Rejection::Malformed => w.u8(1),
            Rejection::WrongChain => w.u8(2),
            Rejection::BadSignature => w.u8(3),
            Rejection::BadNonce { expected, got } => {
                w.u8(4);
                w.u64(expected);
                w.u64(got);
            }
            Rejection::FeeTooLow { min } => {
                w.u8(5);
                w.u64(min);
            }
            Rejection::InsufficientFunds { needed, available } => {
                w.u8(6);
                w.u64(needed);
                w.u64(available);
            }
            Rejection::NotAValidator => w.u8(7),
            Rejection::InsufficientStake { available } => {
                w.u8(8);
                w.u64(available);
            }
            Rejection::StakeBelowMinimum { min } => {
                w.u8(9);
                w.u64(min);
            }
            Rejection::BondTooLow { min } => {
                w.u8(10);
                w.u64(min);
            }
            Rejection::EncoderExists => w.u8(11),
            Rejection::UnknownEncoder => w.u8(12),
            Rejection::NotOwner => w.u8(13),
            Rejection::Overflow => w.u8(14),
            Rejection::DataTooLarge { max } => {
                w.u8(15);
                w.u32(max);
            }
            Rejection::PaymentTooLow { min } => {
                w.u8(16);
                w.u64(min);
            }
            Rejection::NoEncoders => w.u8(17),
            Rejection::UnknownJob => w.u8(18),
            Rejection::JobDecided => w.u8(19),
            Rejection::AlreadyAttested => w.u8(20),
            Rejection::BadAttestation => w.u8(21),
            Rejection::BadPackage => w.u8(22),
            Rejection::NotPackageSigner => w.u8(23),
            Rejection::WrongDimension { expected } => {
                w.u8(24);
                w.u16(expected);
            }
            Rejection::EncoderBusy => w.u8(25),
            Rejection::StakeLocked => w.u8(26),
            Rejection::NotText => w.u8(27),
            Rejection::NotTextEncoder => w.u8(28),
            Rejection::InputLimitTooLow { min } => {
                w.u8(29);
                w.u32(min);
            }
            Rejection::NotTextData => w.u8(30),
        }
    }
}

impl Decode<'_> for Receipt {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let transaction = match r.bool("has digest")? {
            true => Some(Digest(r.array("transaction")?)),
            false => None,
        };
        let fee = r.u64("fee")?;
        let rejection = match r.u8("outcome")? {
            0 => None,
            1 => Some(Rejection::Malformed),
            2 => Some(Rejection::WrongChain),
            3 => Some(Rejection::BadSignature),
            4 => Some(Rejection::BadNonce {
                expected: r.u64("expected")?,
                got: r.u64("got")?,
            }),
            5 => Some(Rejection::FeeTooLow { min: r.u64("min")? }),
            6 => Some(Rejection::InsufficientFunds {
                needed: r.u64("needed")?,
                available: r.u64("available")?,
            }),
            7 => Some(Rejection::NotAValidator),
            8 => Some(Rejection::InsufficientStake {
                available: r.u64("available")?,
            }),
            9 => Some(Rejection::StakeBelowMinimum { min: r.u64("min")? }),
            10 => Some(Rejection::BondTooLow { min: r.u64("min")? }),
            11 => Some(Rejection::EncoderExists),
            12 => Some(Rejection::UnknownEncoder),
            13 => Some(Rejection::NotOwner),
            14 => Some(Rejection::Overflow),
            15 => Some(Rejection::DataTooLarge { max: r.u32("max")? }),
            16 => Some(Rejection::PaymentTooLow { min: r.u64("min")? }),
            17 => Some(Rejection::NoEncoders),
            18 => Some(Rejection::UnknownJob),
            19 => Some(Rejection::JobDecided),
            20 => Some(Rejection::AlreadyAttested),
            21 => Some(Rejection::BadAttestation),
            22 => Some(Rejection::BadPackage),
            23 => Some(Rejection::NotPackageSigner),
            24 => Some(Rejection::WrongDimension {
                expected: r.u16("expected")?,
            }),
            25 => Some(Rejection::EncoderBusy),
            26 => Some(Rejection::StakeLocked),
            27 => Some(Rejection::NotText),
            28 => Some(Rejection::NotTextEncoder),
            29 => Some(Rejection::InputLimitTooLow { min: r.u32("min")? }),
            30 => Some(Rejection::NotTextData),
            code => {
                return Err(DecodeError::invalid(
                    "outcome",
                    format!("unknown code {code}"),
                ));
            }
        };
        Ok(Receipt {
            transaction,
            rejection,
            fee,
        })
    }
}
