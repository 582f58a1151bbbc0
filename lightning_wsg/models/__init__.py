"""Plain ``nn.Module`` networks (no Lightning): region and phrase encoders, the teacher."""
