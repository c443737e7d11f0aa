from django.contrib import admin

from review import models

for _model in (
    models.VerificationSettings,
    models.VerificationRound,
    models.Review,
    models.ReviewDecision,
    models.ReviewComment,
    models.Dispute,
    models.PairAgreement,
    models.CorrectionRecord,
):
    admin.site.register(_model)
