from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import render

from analysis.access import clinic_for, get_for_clinic
from analysis.models import Analysis
from analysis.reports import file_name


@login_required
def home(request):
    return render(request, "home.html", {"clinic": clinic_for(request.user)})


@login_required
def analysis_report(request, pk: int):
    """The PDF report of one analysis, for staff of its clinic only; 404 until the worker has written it."""
    analysis = get_for_clinic(request.user, Analysis.objects.select_related("image__case__patient__clinic"), pk=pk)
    if not analysis.report or not analysis.report.storage.exists(analysis.report.name):
        if analysis.status == Analysis.Status.DONE:
            from workers.tasks import render_report

            render_report.delay(analysis.pk)  # lost or never written: the worker produces it (again)
        raise Http404("This report has not been produced yet.")
    return FileResponse(
        analysis.report.open("rb"), as_attachment=True, filename=file_name(analysis), content_type="application/pdf"
    )
