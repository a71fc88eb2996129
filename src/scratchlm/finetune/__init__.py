"""Fine-tuning a pretrained run: classification, instruction/chat SFT, LoRA and DPO."""
