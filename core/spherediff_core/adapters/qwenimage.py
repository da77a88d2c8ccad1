"""Qwen-Image (MMDiT over 2x2-packed latents, Qwen2.5-VL text, true CFG with a norm rescale).

The sphere holds the VAE's 16-channel latents (normalised by the VAE's per-channel mean and
std); a view's grid (even sides) is packed into 2x2 patch tokens only for the transformer
call. QwenImagePipeline's guidance is true CFG on a negative prompt, after which each packed
token of the guided prediction is rescaled to the norm of the positive one: a per-token
operation inside one view, so it runs in :class:`QwenImageGuidance` on the view grids.

The pipeline keeps only each prompt's real tokens, so prompts of different lengths (the
positive and the negative one, directional prompts) cannot be stacked into one batch: the
adapter calls the transformer once per distinct text length, as the pipeline calls it once
for the positive and once for the negative prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..denoise import DenoiserInput, Guidance
from .base import ModelAdapter, PromptEmbedding
from .flow import flow_match_scheduler, linspace_sigmas


def pack_tokens(grids: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w) grids -> (n, h/2 * w/2, C * 4) 2x2 patch tokens (channel-major, as
    QwenImagePipeline._pack_latents)."""
    n, c, h, w = grids.shape
    x = grids.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_tokens(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, h/2 * w/2, C * 4) tokens -> (n, C, h, w) grids (the inverse of pack_tokens)."""
    n, _, d = tokens.shape
    x = tokens.reshape(n, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, d // 4, h, w)


@dataclass(frozen=True)
class QwenImageGuidance(Guidance):
    """QwenImagePipeline's true CFG: ``comb = neg + s * (pos - neg)``, then every 2x2 token
    of ``comb`` rescaled to the norm of the same token of ``pos`` (the norm over its
    4 * C = 64 packed values; pipeline_qwenimage.py, the ``do_true_cfg`` branch)."""

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        h, w = cond.shape[-2:]
        # The pipeline's own operations on the same packed layout, so the norms agree bit
        # for bit with a single-image run.
        neg, pos = pack_tokens(uncond), pack_tokens(cond)
        comb = neg + scale * (pos - neg)
        cond_norm = torch.norm(pos, dim=-1, keepdim=True)
        comb_norm = torch.norm(comb, dim=-1, keepdim=True)
        return unpack_tokens(comb * (cond_norm / comb_norm), h, w)


class QwenImageAdapter(ModelAdapter):
    family = "qwenimage"
    pipeline_classes = ("QwenImagePipeline",)
    denoiser_io_like_pipeline_latents = True
    display_name = "Qwen-Image"
    # QwenImagePipeline.__call__ defaults: 50 steps, true_cfg_scale 4.0.
    default_steps = 50
    default_guidance = 4.0
    # The scheduler's shift_terminal stretch divides 0 by 0 with one step (a NaN sigma).
    min_steps = 2
    grid_multiple = 2
    preferred_half = torch.bfloat16
    # Trained at 1328 px for 1:1 (the pipeline's default is 1024 px).
    native_view_px = 1328
    default_size = "4K"
    max_sequence_length = 512
    """Text tokens kept per prompt (QwenImagePipeline.__call__'s default)."""

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels) // 4

    def cfg_scale(self, guidance: float, options: Any) -> float:
        # The guidance is QwenImagePipeline's true_cfg_scale: the pipeline guides when it is
        # above 1 and a negative prompt is given, and the engine always has one ("" by
        # default; even " ", the model card's, counts, so no strip()).
        return float(guidance) if guidance > 1.0 else 1.0

    def guidance_rule(self, guidance: float, options: Any) -> Guidance | None:
        scale = self.cfg_scale(guidance, options)
        return QwenImageGuidance(scale) if scale != 1.0 else None

    # --- prompts ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        """(1, L, D) embeddings of the prompt's L real tokens (no padding, no mask)."""
        embeds, _ = self.pipe.encode_prompt(
            prompt, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return PromptEmbedding(prompt, {"encoder_hidden_states": embeds.cpu()})

    # --- timesteps ----------------------------------------------------------------------
    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        # QwenImagePipeline: np.linspace sigmas and mu from the packed sequence length; the
        # config's shift_terminal then stretches the sigmas.
        return flow_match_scheduler(
            self.pipe.scheduler,
            steps,
            self.device,
            image_seq_len=(grid_hw[0] // 2) * (grid_hw[1] // 2),
            sigmas=linspace_sigmas(steps),
        )

    # --- denoiser -----------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        """(n, 16, h, w) grids -> (n, 16, h, w) flow velocity, float32.

        Items are grouped by their text length (every item of a group has all its tokens
        real, so the transformer needs no mask) and each group is one transformer call.
        """
        transformer = self.pipe.transformer
        dtype = transformer.dtype
        n, _, h, w = inp.latents.shape
        latents = inp.latents.to(device=self.device, dtype=dtype)
        timestep = self.expand_timestep(inp).to(dtype) / 1000
        groups: dict[int, list[int]] = {}
        for i, cond in enumerate(inp.conditioning):
            groups.setdefault(cond.tensors["encoder_hidden_states"].shape[1], []).append(i)
        out = torch.empty(n, (h // 2) * (w // 2), transformer.config.out_channels * 4)
        out = out.to(device=self.device)
        for items in groups.values():
            index = torch.tensor(items, device=self.device)
            texts: dict[int, torch.Tensor] = {}  # each distinct prompt moved once
            for i in items:
                c = inp.conditioning[i]
                if id(c) not in texts:
                    texts[id(c)] = c.tensors["encoder_hidden_states"].to(self.device, dtype)
            text = torch.cat([texts[id(inp.conditioning[i])] for i in items])
            pred = transformer(
                hidden_states=pack_tokens(latents[index]),
                timestep=timestep[index],
                guidance=None,
                encoder_hidden_states_mask=None,
                encoder_hidden_states=text,
                img_shapes=[[(1, h // 2, w // 2)]] * len(items),
                return_dict=False,
            )[0]
            out[index] = pred.float()
        return unpack_tokens(out, h, w).to(inp.latents.device)

    # --- decoding and encoding: a 5-D VAE with per-channel statistics --------------------
    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latents mean and std as (1, C, 1, 1, 1) tensors."""
        config = self.pipe.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    def to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) -> the VAE decoder's (n, C, 1, h, w), as QwenImagePipeline writes
        it: ``latents / (1 / std) + mean``."""
        latents = latents.unsqueeze(2)
        mean, std = self._latent_stats(latents)
        return latents / (1.0 / std) + mean

    def from_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's (n, C, 1, h, w) -> (n, C, h, w), as QwenImageImg2ImgPipeline
        writes it: ``(latents - mean) * (1 / std)``."""
        mean, std = self._latent_stats(latents)
        return ((latents - mean) * (1.0 / std))[:, :, 0]

    def decode(self, latents: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(n, C, h, w) -> RGB (n, 3, h * 8, w * 8) in [0, 1], float32."""
        vae = self.pipe.vae
        lat = self.to_vae_latents(latents.to(device=self.device, dtype=vae.dtype))
        image = vae.decode(lat, return_dict=False)[0][:, :, 0]
        return image.float().div_(2).add_(0.5).clamp_(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """RGB (n, 3, H, W) in [0, 1] -> (n, C, H / 8, W / 8) (the distribution's mode)."""
        vae = self.pipe.vae
        x = (images * 2.0 - 1.0).to(device=self.device, dtype=vae.dtype).unsqueeze(2)
        lat = vae.encode(x).latent_dist.mode()
        return self.from_vae_latents(lat.float()).float()

    # --- test hooks: QwenImagePipeline's latents are packed 2x2 tokens --------------------
    def pipeline_latents(self, grid: torch.Tensor) -> torch.Tensor:
        return pack_tokens(grid)

    def grid_from_pipeline_latents(
        self, latents: torch.Tensor, grid_shape: tuple[int, ...]
    ) -> torch.Tensor:
        return unpack_tokens(latents, grid_shape[-2], grid_shape[-1])
