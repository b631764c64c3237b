//! Files and strings in, text, boxes and scores out: the tokenizer, the image preprocessing
//! and a loaded model put together for each task. The command line and the server use this.

use crate::checkpoint::Checkpoint;
use crate::config::MplugConfig;
use crate::error::{Error, Result};
use crate::generate::BeamConfig;
use crate::input::{
    DecodeOptions, EncodeOptions, GroundingPreprocessor, ImageConfig, ImagePreprocessor,
    LetterboxConfig, LetterboxInfo, Letterboxed, Padding, Tokenizer, VideoConfig,
    VideoPreprocessor,
};
use crate::model::kernels::on_pool;
use crate::model::{Mplug, Task};
use crate::tasks::{caption, grounding, retrieval, video, vqa};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Longest question or expression the pipeline passes to the model, in tokens (the reference
/// truncates VQA questions and grounding expressions well below this).
pub const MAX_TEXT_TOKENS: usize = 64;

/// A generated text with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Post-processed text.
    pub text: String,
    /// Length-penalized log-probability (what beam search ranks by).
    pub score: f32,
    /// The probability of the text: its tokens' probabilities multiplied (the answer's
    /// confidence; when sampling, under the tempered and filtered distribution).
    pub prob: f32,
    /// Token ids, `[CLS]` first.
    pub ids: Vec<u32>,
}

/// A closed-list answer with its probability among the re-ranked candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedText {
    /// The candidate text.
    pub text: String,
    /// Its index in the candidate list.
    pub index: usize,
    /// Softmax over the re-ranked candidates.
    pub prob: f32,
}

/// A label of zero-shot classification with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredLabel {
    /// The label.
    pub label: String,
    /// Its index in the label list.
    pub index: usize,
    /// Probability among the labels: softmax of the ITC similarities at the model's
    /// temperature, as CLIP's zero-shot classification computes it.
    pub score: f32,
    /// The ITC similarity (cosine) between the image and the label's prompt.
    pub similarity: f32,
    /// With ITM re-scoring: the ITM head's match probability for the image and the prompt
    /// (the softmax of its two logits), which then orders the labels.
    pub match_prob: Option<f32>,
}

/// The prompt of zero-shot classification when none is given: `{}` is the label.
pub const DEFAULT_LABEL_TEMPLATE: &str = "a photo of {}";

/// A grounded box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundedBox {
    /// `(x0, y0, x1, y1)` in pixels of the original image.
    pub xyxy: [f32; 4],
    /// `(cx, cy, w, h)` as fractions of the padded square the model saw.
    pub cxcywh: [f32; 4],
}

/// The first `n` entries of the embedded BERT uncased vocabulary as a tokenizer.
pub fn truncated_vocab(n: usize) -> Result<Tokenizer> {
    let lines: Vec<&str> = crate::input::BERT_BASE_UNCASED_VOCAB
        .lines()
        .take(n)
        .collect();
    let text = lines.join("\n") + "\n";
    Ok(Tokenizer::from_vocab_bytes(
        text.as_bytes(),
        Path::new("<embedded, first entries>"),
    )?)
}

/// What the model looks at.
#[derive(Debug, Clone, Copy)]
pub enum Visual<'a> {
    /// Normalized images `(N, 3, R, R)`.
    Images(&'a Tensor),
    /// Normalized clips `(N, F, 3, R, R)`.
    Clips(&'a Tensor),
}

impl Visual<'_> {
    /// Number of images or clips.
    pub fn count(&self) -> Result<usize> {
        Ok(match self {
            Visual::Images(t) | Visual::Clips(t) => t.dim(0)?,
        })
    }
}

/// A model with the input processing its task needs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    model: Mplug,
    tokenizer: Tokenizer,
    images: ImagePreprocessor,
    letterbox: GroundingPreprocessor,
    grounding: grounding::GroundingTokens,
}

impl Pipeline {
    /// Loads a checkpoint for `task` with the embedded BERT uncased vocabulary (or, for a
    /// model with a smaller vocabulary such as the tiny test models, its first entries).
    pub fn load(
        config: &MplugConfig,
        checkpoint: impl AsRef<Path>,
        task: Task,
        device: &Device,
    ) -> Result<Self> {
        let ckpt = Checkpoint::load(checkpoint)?;
        let model = Mplug::load(config, &ckpt, task, DType::F32, device)?;
        let grounding = grounding::GroundingTokens::from_checkpoint(&ckpt)?;
        let tokenizer = Tokenizer::bert_base_uncased()?;
        let tokenizer = if tokenizer.vocab_size() > config.bert.vocab_size {
            truncated_vocab(config.bert.vocab_size)?
        } else {
            tokenizer
        };
        Self::new(model, tokenizer, grounding)
    }

    /// Puts a model and a tokenizer together.
    /// Fails when the tokenizer can produce ids the model's vocabulary lacks.
    pub fn new(
        model: Mplug,
        tokenizer: Tokenizer,
        grounding: grounding::GroundingTokens,
    ) -> Result<Self> {
        let vocab = model.config.bert.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::Config(format!(
                "the tokenizer has {} tokens but the model's vocabulary has {vocab}",
                tokenizer.vocab_size()
            )));
        }
        let res = model.config.image_res as u32;
        let tokenizer = tokenizer.with_max_positions(model.config.bert.max_position_embeddings);
        Ok(Self {
            images: ImagePreprocessor::new(ImageConfig::new(res))?,
            letterbox: GroundingPreprocessor::new(LetterboxConfig::new(res))?,
            model,
            tokenizer,
            grounding,
        })
    }

    /// The model.
    pub fn model(&self) -> &Mplug {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The grounding vocabulary: the coordinate tokens boxes are decoded from.
    pub fn grounding_tokens(&self) -> &grounding::GroundingTokens {
        &self.grounding
    }

    /// The same pipeline refusing images of more than `max_pixels` pixels, read from the
    /// image's header before its pixels are decoded (what a server sets so that one upload
    /// cannot take its memory).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Result<Self> {
        let res = self.model.config.image_res as u32;
        let decode = DecodeOptions {
            max_pixels,
            ..DecodeOptions::default()
        };
        let mut images = ImageConfig::new(res);
        images.decode = decode;
        let mut letterbox = LetterboxConfig::new(res);
        letterbox.decode = decode;
        self.images = ImagePreprocessor::new(images)?;
        self.letterbox = GroundingPreprocessor::new(letterbox)?;
        Ok(self)
    }

    /// Decodes and normalizes image files into `(N, 3, R, R)`.
    pub fn load_images<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Result<Tensor> {
        Ok(self.images.preprocess_paths(paths, self.model.device())?)
    }

    /// The width and height of an encoded image from its header (no pixels decoded), checked
    /// against the pipeline's pixel limit; `name` names it in errors.
    pub fn image_dimensions(&self, bytes: &[u8], name: &str) -> Result<(u32, u32)> {
        Ok(self.images.config().decode.dimensions(bytes, name)?)
    }

    /// Decodes and normalizes one encoded image (PNG, JPEG, ...) into `(3, R, R)`; `name`
    /// names it in errors.
    pub fn preprocess_bytes(&self, bytes: &[u8], name: &str) -> Result<Tensor> {
        Ok(self
            .images
            .preprocess_bytes(bytes, name, self.model.device())?)
    }

    /// Decodes one encoded image and letterboxes it onto the square grounding reads, `(3, R,
    /// R)`, with where it sits ([`Pipeline::ground_letterboxed`] maps boxes back through it).
    pub fn letterbox_bytes(&self, bytes: &[u8], name: &str) -> Result<Letterboxed> {
        Ok(self
            .letterbox
            .preprocess_bytes(bytes, name, self.model.device())?)
    }

    /// The longest text passed to the model, in tokens: [`MAX_TEXT_TOKENS`], or the model's
    /// positions when it has fewer. Longer texts are cut to it.
    pub fn text_limit(&self) -> usize {
        MAX_TEXT_TOKENS.min(self.model.config.bert.max_position_embeddings)
    }

    /// Token ids and attention masks `(N, L)` of texts (questions, referring expressions,
    /// retrieval texts) as every task passes them to the model: padded to the longest, cut at
    /// [`Pipeline::text_limit`].
    pub fn encode_texts(&self, texts: &[impl AsRef<str> + Sync]) -> Result<(Tensor, Tensor)> {
        self.encode_texts_with(texts, Padding::Longest, self.text_limit())
    }

    /// [`Pipeline::encode_texts`] with an evaluation protocol's padding and limit (the
    /// reference pads retrieval captions to 30 tokens); the limit is at most the model's
    /// positions.
    pub fn encode_texts_with(
        &self,
        texts: &[impl AsRef<str> + Sync],
        padding: Padding,
        limit: usize,
    ) -> Result<(Tensor, Tensor)> {
        let limit = limit.min(self.model.config.bert.max_position_embeddings);
        let opts = match padding {
            Padding::Longest => EncodeOptions::longest(),
            Padding::Fixed(_) => EncodeOptions::fixed(limit),
        }
        .truncate(limit);
        let batch = self.tokenizer.encode_batch(texts, &opts)?;
        Ok(batch.to_tensors(self.model.device())?)
    }

    /// Checks that a text encodes as [`Pipeline::encode_texts`] would (it is not empty).
    pub fn check_text(&self, text: &str) -> Result<()> {
        self.tokenizer.encode(text, Some(self.text_limit()))?;
        Ok(())
    }

    /// Checks that closed-list answers encode (none empty, each within the positions).
    pub fn check_answers(&self, answers: &[impl AsRef<str> + Sync]) -> Result<()> {
        self.tokenizer.encode_answers(answers)?;
        Ok(())
    }

    /// Images encoded for retrieval: visual tokens and normalized ITC features.
    pub fn image_side(&self, visual: Visual) -> Result<retrieval::ImageSide> {
        on_pool(|| {
            let side = match visual {
                Visual::Images(t) => retrieval::encode_images(&self.model, t)?,
                Visual::Clips(t) => video::encode_videos(&self.model, t)?,
            };
            ensure_finite_tensor(&side.feat, "the image features")?;
            Ok(side)
        })
    }

    /// Texts encoded for retrieval (as [`Pipeline::encode_texts`]): text states, mask and
    /// normalized ITC features.
    pub fn text_side(&self, texts: &[impl AsRef<str> + Sync]) -> Result<retrieval::TextSide> {
        on_pool(|| {
            if texts.is_empty() {
                return Err(Error::invalid("no texts to encode"));
            }
            let (ids, mask) = self.encode_texts(texts)?;
            let side = retrieval::encode_texts(&self.model, &ids, &mask)?;
            ensure_finite_tensor(&side.feat, "the text features")?;
            Ok(side)
        })
    }

    /// L2-normalized ITC features of images or clips, one row each (what search indexes and
    /// `/v1/embed` return).
    pub fn embed_images(&self, visual: Visual) -> Result<Vec<Vec<f32>>> {
        Ok(self.image_side(visual)?.feat.to_vec2::<f32>()?)
    }

    /// L2-normalized ITC features of texts, one row each.
    pub fn embed_texts(&self, texts: &[impl AsRef<str> + Sync]) -> Result<Vec<Vec<f32>>> {
        Ok(self.text_side(texts)?.feat.to_vec2::<f32>()?)
    }

    fn generated(&self, hyps: Vec<Vec<crate::Hypothesis>>) -> Result<Vec<Vec<Generated>>> {
        crate::error::ensure_finite(
            hyps.iter().flatten().map(|h| &h.score),
            "the generated texts' scores",
        )?;
        Ok(hyps
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|h| Generated {
                        text: self.tokenizer.decode_postprocessed(&h.ids),
                        score: h.score,
                        prob: h.log_prob.exp(),
                        ids: h.ids,
                    })
                    .collect()
            })
            .collect())
    }

    /// Captions of images `(N, 3, R, R)`.
    pub fn caption(&self, images: &Tensor, beam: &BeamConfig) -> Result<Vec<Vec<Generated>>> {
        self.caption_visual(Visual::Images(images), beam)
    }

    /// Captions of images or clips (a clip's frame tokens are concatenated, as the reference's
    /// video captioning does).
    pub fn caption_visual(&self, visual: Visual, beam: &BeamConfig) -> Result<Vec<Vec<Generated>>> {
        on_pool(|| {
            let embeds = self.visual_tokens(visual)?;
            self.generated(caption::generate(&self.model, &embeds, beam)?)
        })
    }

    /// Visual tokens: `(N, Li, H)` for images, `(N, F * Li, H)` for clips of `F` frames.
    pub fn visual_tokens(&self, visual: Visual) -> Result<Tensor> {
        on_pool(|| {
            let tokens = match visual {
                Visual::Images(t) => self.model.encode_image(t)?,
                Visual::Clips(t) => video::encode_frames(&self.model, t)?,
            };
            ensure_finite_tensor(&tokens, "the visual tokens")?;
            Ok(tokens)
        })
    }

    /// Decodes clips (animated GIFs, folders of frames, or video files through ffmpeg) into
    /// `(N, frames, 3, R, R)`, `frames` sampled uniformly as the reference does.
    pub fn load_clips<P: AsRef<Path>>(&self, paths: &[P], frames: usize) -> Result<Tensor> {
        let res = self.model.config.image_res as u32;
        let pre = VideoPreprocessor::new(VideoConfig::new(frames, res))?;
        let clips = paths
            .iter()
            .map(|p| Ok(pre.load(p, self.model.device())?.frames))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&clips, 0)?)
    }

    fn question_states(
        &self,
        visual: Visual,
        questions: &[impl AsRef<str> + Sync],
    ) -> Result<vqa::QuestionStates> {
        let n = visual.count()?;
        if questions.len() != n {
            return Err(Error::invalid(format!(
                "{} questions for {n} images",
                questions.len()
            )));
        }
        let (ids, mask) = self.encode_texts(questions)?;
        let embeds = self.visual_tokens(visual)?;
        vqa::encode_question(&self.model, &embeds, &ids, &mask)
    }

    /// Free-form answers, one question per image.
    pub fn answer(
        &self,
        images: &Tensor,
        questions: &[impl AsRef<str> + Sync],
        beam: &BeamConfig,
    ) -> Result<Vec<Vec<Generated>>> {
        self.answer_visual(Visual::Images(images), questions, beam)
    }

    /// Free-form answers, one question per image or clip.
    pub fn answer_visual(
        &self,
        visual: Visual,
        questions: &[impl AsRef<str> + Sync],
        beam: &BeamConfig,
    ) -> Result<Vec<Vec<Generated>>> {
        on_pool(|| {
            let q = self.question_states(visual, questions)?;
            self.generated(vqa::generate(&self.model, &q, beam)?)
        })
    }

    /// Ranks a closed list of answers for each (image, question), best `k` first.
    pub fn rank_answers(
        &self,
        images: &Tensor,
        questions: &[impl AsRef<str> + Sync],
        answers: &[impl AsRef<str> + Sync],
        k: usize,
    ) -> Result<Vec<Vec<RankedText>>> {
        self.rank_answers_visual(Visual::Images(images), questions, answers, k)
    }

    /// Ranks a closed list of answers for each (image or clip, question), best `k` first.
    pub fn rank_answers_visual(
        &self,
        visual: Visual,
        questions: &[impl AsRef<str> + Sync],
        answers: &[impl AsRef<str> + Sync],
        k: usize,
    ) -> Result<Vec<Vec<RankedText>>> {
        on_pool(|| {
            let q = self.question_states(visual, questions)?;
            let enc = self.tokenizer.encode_answers(answers)?;
            let (ids, mask) = enc.to_tensors(self.model.device())?;
            let ranked = vqa::rank_answers(&self.model, &q, &ids, &mask, k.min(answers.len()))?;
            crate::error::ensure_finite(
                ranked.iter().flatten().map(|r| &r.prob),
                "the answers' probabilities",
            )?;
            Ok(ranked
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|r| RankedText {
                            text: answers[r.index].as_ref().to_string(),
                            index: r.index,
                            prob: r.prob,
                        })
                        .collect()
                })
                .collect())
        })
    }

    /// The box each expression refers to in its image file.
    pub fn ground<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
        expressions: &[impl AsRef<str> + Sync],
    ) -> Result<Vec<GroundedBox>> {
        if paths.len() != expressions.len() {
            return Err(Error::invalid(format!(
                "{} expressions for {} images",
                expressions.len(),
                paths.len()
            )));
        }
        let (images, infos) = self
            .letterbox
            .preprocess_paths(paths, self.model.device())?;
        self.ground_letterboxed(&images, &infos, expressions)
    }

    /// The box each expression refers to in its letterboxed image `(N, 3, R, R)` (from
    /// [`Pipeline::letterbox_bytes`]), in pixels of the original image through `infos`.
    pub fn ground_letterboxed(
        &self,
        images: &Tensor,
        infos: &[LetterboxInfo],
        expressions: &[impl AsRef<str> + Sync],
    ) -> Result<Vec<GroundedBox>> {
        on_pool(|| {
            let n = images.dim(0)?;
            if infos.len() != n || expressions.len() != n {
                return Err(Error::invalid(format!(
                    "{} expressions and {} placements for {n} images",
                    expressions.len(),
                    infos.len()
                )));
            }
            let (ids, mask) = self.encode_texts(expressions)?;
            let embeds = self.visual_tokens(Visual::Images(images))?;
            let boxes = grounding::predict(&self.model, &embeds, &ids, &mask, &self.grounding)?;
            crate::error::ensure_finite(boxes.iter().flatten(), "the boxes")?;
            Ok(boxes
                .into_iter()
                .zip(infos)
                .map(|(cxcywh, info)| GroundedBox {
                    xyxy: info.box_to_original(cxcywh),
                    cxcywh,
                })
                .collect())
        })
    }

    /// Retrieval scores of the reference's evaluation between images and texts: ITC top `k`
    /// re-scored by ITM (the positive-class logit). Returns `(image -> text, text -> image)`
    /// matrices (-100 outside the top `k`; each side's `k` is at most its number of
    /// candidates, see [`retrieval::rerank`]).
    pub fn retrieve(
        &self,
        images: &Tensor,
        texts: &[impl AsRef<str> + Sync],
        k: usize,
    ) -> Result<(retrieval::ScoreMatrix, retrieval::ScoreMatrix)> {
        self.retrieve_visual(Visual::Images(images), texts, k)
    }

    /// Retrieval scores between images or clips and texts, as the reference evaluates each:
    /// ITM for images, ITM + ITC similarity for clips (whose ITC feature is the normalized mean
    /// of the frames' projected [CLS]).
    pub fn retrieve_visual(
        &self,
        visual: Visual,
        texts: &[impl AsRef<str> + Sync],
        k: usize,
    ) -> Result<(retrieval::ScoreMatrix, retrieval::ScoreMatrix)> {
        on_pool(|| {
            let rescore = match visual {
                Visual::Images(_) => retrieval::Rescore::Itm,
                Visual::Clips(_) => retrieval::Rescore::ItmPlusSimilarity,
            };
            let (visual_side, text_side) = self.retrieval_sides(visual, texts)?;
            retrieval::rerank(&self.model, &visual_side, &text_side, k, rescore)
        })
    }

    /// Image-to-text scores for encoded images and texts ([`Pipeline::image_side`],
    /// [`Pipeline::text_side`]): for each image, its top `min(k, texts)` texts by ITC
    /// similarity get their ITM positive logit, every other entry -100. Only images ask (no
    /// text-to-image side), so scoring images in chunks gives the same rows as scoring them
    /// together; the ITM head reads a few pairs at a time.
    pub fn rank_texts(
        &self,
        images: &retrieval::ImageSide,
        texts: &retrieval::TextSide,
        k: usize,
    ) -> Result<retrieval::ScoreMatrix> {
        on_pool(|| {
            let sims = retrieval::similarities(images, texts)?;
            let (ni, nt) = sims.dims2()?;
            let queries: Vec<usize> = (0..ni).collect();
            let rows = retrieval::rerank_rows(
                &self.model,
                images,
                texts,
                &sims,
                &queries,
                retrieval::Query::Image,
                k,
                retrieval::Rescore::Itm,
                retrieval::ITM_PAIRS_PER_CALL,
            )?;
            Ok(retrieval::score_matrix(&rows, nt))
        })
    }

    /// Zero-shot classification of images or clips: every label, written into `template`
    /// (`{}` is the label; the label alone when the template has no `{}`), is scored by the
    /// ITC similarity of the prompt to the image, and the similarities divided by the model's
    /// temperature give probabilities over the labels by a softmax (CLIP's zero-shot
    /// classification, here with mPLUG's contrastive heads). With `itm`, each label also gets
    /// the ITM head's match probability for the image and its prompt, which then orders the
    /// labels (the retrieval protocol's re-scoring). Best first.
    pub fn classify(
        &self,
        visual: Visual,
        labels: &[impl AsRef<str> + Sync],
        template: &str,
        itm: bool,
    ) -> Result<Vec<Vec<ScoredLabel>>> {
        on_pool(|| {
            if labels.is_empty() {
                return Err(Error::invalid("no labels to choose from"));
            }
            let heads = self.model.heads.as_ref().ok_or_else(|| {
                Error::Unsupported(format!(
                    "zero-shot classification needs a retrieval model (ITC heads); this is a {} \
                     model",
                    self.model.task
                ))
            })?;
            let prompts: Vec<String> = labels
                .iter()
                .map(|l| {
                    if template.contains("{}") {
                        template.replace("{}", l.as_ref())
                    } else {
                        l.as_ref().to_string()
                    }
                })
                .collect();
            let temp = heads
                .temp
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(0.07)
                .clamp(0.001, 0.5);
            let (images, texts) = self.retrieval_sides(visual, &prompts)?;
            let sims = retrieval::similarity_rows(&images, &texts)?;
            let nl = labels.len();
            let matches = if itm {
                let pairs: Vec<(usize, usize)> = (0..sims.len())
                    .flat_map(|i| (0..nl).map(move |j| (i, j)))
                    .collect();
                let mut probs = Vec::with_capacity(pairs.len());
                for chunk in pairs.chunks(retrieval::ITM_PAIRS_PER_CALL) {
                    probs.extend(retrieval::itm_probabilities(
                        &self.model,
                        &images,
                        &texts,
                        chunk,
                    )?);
                }
                Some(probs)
            } else {
                None
            };
            Ok(sims
                .into_iter()
                .enumerate()
                .map(|(i, row)| {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s / temp));
                    let exps: Vec<f32> = row.iter().map(|&s| (s / temp - max).exp()).collect();
                    let total: f32 = exps.iter().sum();
                    let mut scored: Vec<ScoredLabel> = row
                        .iter()
                        .zip(&exps)
                        .enumerate()
                        .map(|(j, (&sim, &e))| ScoredLabel {
                            label: labels[j].as_ref().to_string(),
                            index: j,
                            score: e / total,
                            similarity: sim,
                            match_prob: matches.as_ref().map(|m| m[i * nl + j]),
                        })
                        .collect();
                    let key = |l: &ScoredLabel| l.match_prob.unwrap_or(l.score);
                    scored.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.index.cmp(&b.index)));
                    scored
                })
                .collect())
        })
    }

    /// ITC similarities between images or clips and texts, `(visuals, texts)`: the ranking
    /// before ITM re-scores it, for every text (a model whose ITM head is weak ranks better by
    /// these alone).
    pub fn similarities(
        &self,
        visual: Visual,
        texts: &[impl AsRef<str> + Sync],
    ) -> Result<retrieval::ScoreMatrix> {
        on_pool(|| {
            let (visual_side, text_side) = self.retrieval_sides(visual, texts)?;
            retrieval::similarity_rows(&visual_side, &text_side)
        })
    }

    /// Images (or clips: the mean frame feature) and texts encoded for retrieval.
    pub fn retrieval_sides(
        &self,
        visual: Visual,
        texts: &[impl AsRef<str> + Sync],
    ) -> Result<(retrieval::ImageSide, retrieval::TextSide)> {
        on_pool(|| Ok((self.image_side(visual)?, self.text_side(texts)?)))
    }
}

/// Errs with [`Error::NonFinite`] naming `what` when `t` holds a NaN or an infinity (a sum of
/// magnitudes is finite only if every value is; it overflows only for values no working model
/// computes).
fn ensure_finite_tensor(t: &Tensor, what: &str) -> Result<()> {
    let total = t
        .abs()?
        .sum_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_scalar::<f32>()?;
    if total.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite(what.into()))
    }
}
